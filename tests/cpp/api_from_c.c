/* A C99 program using libeditgen_kernels: the installed header and library, no CUDA
 * headers, no Python. It checks that calls the library must refuse are refused before
 * any launch, with a code and a message, so it runs on machines without a GPU.
 * tests/test_cuda_lib.py builds it against an install tree (tests/cpp/consumer). */
#include <editgen_kernels.h>

#include <stdio.h>
#include <string.h>

static int expect(const EditgenCrossArgs *args, int expected, const char *what) {
    const int code = editgen_edited_cross_attention(args, NULL);
    printf("%s -> %d: %s\n", what, code, editgen_last_error());
    return code == expected && strlen(editgen_last_error()) > 0;
}

int main(void) {
    EditgenCrossArgs args;
    int ok = expect(NULL, EDITGEN_ERR_INVALID_ARGUMENT, "NULL args");

    memset(&args, 0, sizeof args);
    args.rows = 4;
    args.heads = 16;
    args.tokens = EDITGEN_MAX_TOKENS + 1;
    args.head_dim = 64;
    args.scale = 0.125f;
    ok = expect(&args, EDITGEN_ERR_UNSUPPORTED_SIZE, "tokens over EDITGEN_MAX_TOKENS") && ok;

    args.tokens = 64;
    ok = expect(&args, EDITGEN_ERR_INVALID_ARGUMENT, "NULL arrays") && ok;
    printf(ok ? "PASSED\n" : "FAILED\n");
    return ok ? 0 : 1;
}
