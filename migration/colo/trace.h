#include "trace/trace-migration_colo.h"
