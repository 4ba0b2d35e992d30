/*
 * no_device_libcuda.c -- a stand-in for the NVIDIA driver library
 * (libcuda.so.1) on machines that have no NVIDIA driver.
 *
 * The Legate / Realm PyPI wheels are CUDA builds and need libcuda.so.1 to
 * load.  This library answers every query with CUDA_ERROR_NO_DEVICE (100),
 * so Realm's CUDA module finds no device and the runtime runs on CPUs only.
 *
 * Build:  cc -O2 -shared -fPIC -Wl,-soname,libcuda.so.1 \
 *             -o libcuda.so.1 no_device_libcuda.c
 *
 * It is only ever built/loaded where no real libcuda.so.1 can be loaded
 * (see setup/install.sh and unity_legion/_native.py).
 */
#include <stddef.h>
#include <string.h>

#define SHIM_EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef unsigned long long cuuint64_t;

enum {
    SHIM_SUCCESS = 0,
    SHIM_ERROR_INVALID_VALUE = 1,
    SHIM_ERROR_NOT_INITIALIZED = 3,
    SHIM_ERROR_NO_DEVICE = 100,
};

/* Returned (as a function pointer) for every entry point we do not define. */
static CUresult shim_no_device(void) { return SHIM_ERROR_NO_DEVICE; }

SHIM_EXPORT CUresult cuInit(unsigned int flags)
{
    (void)flags;
    return SHIM_ERROR_NO_DEVICE;
}

SHIM_EXPORT CUresult cuDriverGetVersion(int *version)
{
    if (version) *version = 0;
    return SHIM_ERROR_NO_DEVICE;
}

SHIM_EXPORT CUresult cuDeviceGetCount(int *count)
{
    if (count) *count = 0;
    return SHIM_ERROR_NO_DEVICE;
}

static const char *shim_error_name(CUresult err)
{
    switch (err) {
    case SHIM_SUCCESS: return "CUDA_SUCCESS";
    case SHIM_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case SHIM_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case SHIM_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}

static const char *shim_error_text(CUresult err)
{
    switch (err) {
    case SHIM_SUCCESS: return "no error";
    case SHIM_ERROR_INVALID_VALUE: return "invalid argument";
    case SHIM_ERROR_NOT_INITIALIZED: return "initialization error";
    case SHIM_ERROR_NO_DEVICE:
        return "no CUDA-capable device is detected (no-device libcuda shim)";
    default: return "unknown error";
    }
}

SHIM_EXPORT CUresult cuGetErrorName(CUresult err, const char **name)
{
    if (name) *name = shim_error_name(err);
    return SHIM_SUCCESS;
}

SHIM_EXPORT CUresult cuGetErrorString(CUresult err, const char **text)
{
    if (text) *text = shim_error_text(err);
    return SHIM_SUCCESS;
}

/* Nothing can have been allocated without a device. */
SHIM_EXPORT CUresult cuMemFreeHost(void *ptr)
{
    (void)ptr;
    return SHIM_ERROR_NO_DEVICE;
}

SHIM_EXPORT CUresult cuMemFree_v2(unsigned long long dptr)
{
    (void)dptr;
    return SHIM_ERROR_NO_DEVICE;
}

SHIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn,
                                      int cuda_version, cuuint64_t flags);
SHIM_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn,
                                         int cuda_version, cuuint64_t flags,
                                         int *symbol_status);

struct shim_entry {
    const char *name;
    void *fn;
};

/* Names as cuGetProcAddress receives them (base names, no _vN suffix),
 * plus the suffixed spellings for good measure. */
static const struct shim_entry shim_table[] = {
    {"cuInit", (void *)cuInit},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount},
    {"cuGetErrorName", (void *)cuGetErrorName},
    {"cuGetErrorString", (void *)cuGetErrorString},
    {"cuMemFreeHost", (void *)cuMemFreeHost},
    {"cuMemFree", (void *)cuMemFree_v2},
    {"cuMemFree_v2", (void *)cuMemFree_v2},
    {"cuGetProcAddress", (void *)cuGetProcAddress_v2},
    {"cuGetProcAddress_v2", (void *)cuGetProcAddress_v2},
};

static void *shim_lookup(const char *symbol)
{
    if (symbol) {
        for (size_t i = 0; i < sizeof(shim_table) / sizeof(shim_table[0]); ++i)
            if (strcmp(symbol, shim_table[i].name) == 0)
                return shim_table[i].fn;
    }
    return (void *)shim_no_device;
}

/* Always succeeds and never hands back NULL: Realm asserts on a NULL
 * pointer, while a stub that returns CUDA_ERROR_NO_DEVICE is fine. */
SHIM_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn,
                                         int cuda_version, cuuint64_t flags,
                                         int *symbol_status)
{
    (void)cuda_version;
    (void)flags;
    if (symbol_status) *symbol_status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
    if (pfn) *pfn = shim_lookup(symbol);
    return SHIM_SUCCESS;
}

SHIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn,
                                      int cuda_version, cuuint64_t flags)
{
    return cuGetProcAddress_v2(symbol, pfn, cuda_version, flags, NULL);
}
