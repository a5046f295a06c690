#include "trace/trace-block_colo.h"
