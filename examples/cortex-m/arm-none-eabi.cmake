# CMake toolchain file for bare-metal Arm with the GNU Arm Embedded toolchain (Debian: gcc-arm-none-eabi,
# libnewlib-arm-none-eabi). The CPU and ABI flags come from the model package (its INTERFACE_COMPILE_OPTIONS), so
# this file only names the compilers.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_AR arm-none-eabi-ar)
# No operating system to link a test program for: CMake's compiler check builds a static library instead.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
# Packages are looked up only under CMAKE_PREFIX_PATH / CMAKE_FIND_ROOT_PATH, never in the build machine's /usr.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
