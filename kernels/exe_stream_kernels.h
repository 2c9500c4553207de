/* exe-stream CUDA kernels: the C ABI that exe_stream/kernels.py loads with ctypes.
 *
 * Plain C types only (no torch C++ ABI), so the library works with any torch build and any
 * caller that can hand over device pointers and a cudaStream_t.
 *
 * roi_resample (DESIGN.md, "Crop/resize kernel spec"; the torch reference exe_stream.roi is
 * the spec): crops of YUV 4:2:0 frames -> bilinear resize -> colour conversion -> optional grey
 * -> (x - mean) / std, written as contiguous NCHW float32 or float16. Frames and output live in
 * device memory; the call only enqueues work on the given stream (asynchronous).
 *
 * Every entry point returns 0 (cudaSuccess) or a cudaError_t value; exs_error_string names it.
 */
#ifndef EXE_STREAM_KERNELS_H
#define EXE_STREAM_KERNELS_H

#include <stdint.h>

#if defined(_WIN32)
#define EXS_API __declspec(dllexport)
#else
#define EXS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct or a signature below changes; the Python loader checks it. */
#define EXS_ABI_VERSION 1

/* One 8-bit plane of a batch of frames, addressed as
 * data[b * batch_stride + row * row_stride + col * col_stride] (strides in bytes, >= 0).
 * I420 planes have col_stride 1; the U and V planes of NV12 are views of the interleaved UV
 * plane: data = uv + 0 (U) or uv + 1 (V), col_stride 2, row_stride = the UV plane's pitch. */
typedef struct exs_plane {
    const uint8_t* data;
    int64_t batch_stride;
    int64_t row_stride;
    int64_t col_stride;
} exs_plane;

/* A batch of YUV 4:2:0 frames: luma height x width, chroma chroma_height x chroma_width
 * (normally (height + 1) / 2 x (width + 1) / 2). */
typedef struct exs_frames {
    exs_plane y;
    exs_plane u;
    exs_plane v;
    int32_t batch;
    int32_t height;
    int32_t width;
    int32_t chroma_height;
    int32_t chroma_width;
    int32_t matrix;     /* EXS_BT601 or EXS_BT709 */
    int32_t full_range; /* 0: limited (Y 16..235, C 16..240), 1: full (0..255) */
} exs_frames;

enum { EXS_BT601 = 0, EXS_BT709 = 1 };
enum { EXS_MODE_RGB = 0, EXS_MODE_GRAY = 1 };
enum { EXS_FLOAT32 = 0, EXS_FLOAT16 = 1 };

/* Crop/resize num_rois ROIs to out_height x out_width on the GPU.
 *
 * frames:  planes in device memory (the struct itself is read on the host).
 * rois:    device pointer, float32 [num_rois, 5] contiguous: (frame row in the batch, x0, y0,
 *          x1, y1) in source pixel edge coordinates; rows outside 0..batch-1 give zeros.
 * mode:    EXS_MODE_RGB (3 output channels) or EXS_MODE_GRAY (1).
 * mean, std: host pointers to 3 (rgb) or 1 (gray) floats.
 * out_dtype: EXS_FLOAT32 or EXS_FLOAT16; out: device pointer, contiguous
 *          [num_rois, channels, out_height, out_width].
 * device:  the CUDA device ordinal the pointers and stream belong to (made current for the
 *          launch, then the previous device is restored).
 * stream:  a cudaStream_t (NULL: the legacy default stream). */
EXS_API int exs_roi_resample(const exs_frames* frames, const float* rois, int32_t num_rois,
                             int32_t out_height, int32_t out_width, int32_t mode,
                             const float* mean, const float* std, int32_t out_dtype, void* out,
                             int32_t device, void* stream);

/* The same computation on the CPU, one pixel at a time, through the same per-pixel code as
 * the kernel: every pointer (planes, rois, out) is host memory. Slow; it exists so that the
 * kernel's arithmetic and addressing can be tested on machines without a GPU. */
EXS_API int exs_roi_resample_host(const exs_frames* frames, const float* rois, int32_t num_rois,
                                  int32_t out_height, int32_t out_width, int32_t mode,
                                  const float* mean, const float* std, int32_t out_dtype,
                                  void* out);

/* 0 when this build has a kernel image the device can run (machine code for its architecture
 * or PTX it can JIT), else the CUDA error (e.g. cudaErrorNoKernelImageForDevice). */
EXS_API int exs_check_device(int32_t device);

/* EXS_ABI_VERSION of the built library. */
EXS_API int exs_abi_version(void);

/* A static, human-readable name for a return code of the functions above. */
EXS_API const char* exs_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* EXE_STREAM_KERNELS_H */
