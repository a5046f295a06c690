#include "trace/trace-net_colo.h"
