/* SwiftPM needs a source file in every C target; everything lives in include/CLinux.h. */
#include "CLinux.h"
