/*
 * ucx_ib_seg_shim.c -- LD_PRELOAD library for multi-rank Legate runs with
 * the libucx-cu12 PyPI wheel.
 *
 * Realm always calls ucp_config_modify(cfg, "IB_SEG_SIZE", ...).  The UCX
 * from the wheel is built without InfiniBand verbs, so UCX rejects that key
 * and Realm aborts.  This wrapper forwards every call to the real
 * ucp_config_modify and turns ONLY a failed "IB_SEG_SIZE" into success.
 *
 * Build:  cc -O2 -shared -fPIC -o libucx_ib_seg_shim.so ucx_ib_seg_shim.c -ldl
 *
 * In a process that never loads UCX the wrapper is never called.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef int shim_ucs_status_t; /* ucs_status_t: UCS_OK == 0, errors < 0 */
typedef shim_ucs_status_t (*shim_modify_fn)(void *config, const char *name,
                                            const char *value);

static shim_modify_fn shim_find_real(void)
{
    static shim_modify_fn real = NULL;
    if (real) return real;

    shim_modify_fn fn = (shim_modify_fn)dlsym(RTLD_NEXT, "ucp_config_modify");
    if (!fn) {
        /* libucp may have been dlopen'ed with RTLD_LOCAL: ask it directly. */
        void *h = dlopen("libucp.so.0", RTLD_LAZY | RTLD_NOLOAD);
        if (h) fn = (shim_modify_fn)dlsym(h, "ucp_config_modify");
    }
    real = fn;
    return real;
}

__attribute__((visibility("default")))
shim_ucs_status_t ucp_config_modify(void *config, const char *name,
                                    const char *value)
{
    shim_modify_fn real = shim_find_real();
    if (!real || real == ucp_config_modify) {
        fprintf(stderr, "ucx_ib_seg_shim: real ucp_config_modify not found\n");
        return -1; /* UCS_ERR_NO_MESSAGE */
    }
    shim_ucs_status_t status = real(config, name, value);
    if (status != 0 && name != NULL && strcmp(name, "IB_SEG_SIZE") == 0)
        return 0; /* UCS_OK: this UCX has no IB transport to configure */
    return status;
}
