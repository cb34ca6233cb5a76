/* cm_version.c - version and build information baked in by the Makefile. */
#include "cm_base.h"

#ifndef TANDEM_VERSION
#define TANDEM_VERSION "0.0.0"
#endif
#ifndef TANDEM_COMMIT
#define TANDEM_COMMIT "unknown"
#endif

const char *cm_version(void) { return TANDEM_VERSION; }
const char *cm_build_commit(void) { return TANDEM_COMMIT; }
