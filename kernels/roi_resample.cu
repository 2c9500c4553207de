// roi_resample: crop/resize of YUV 4:2:0 frames to normalised NCHW tensors (C ABI in
// exe_stream_kernels.h).
//
// The spec is the torch reference exe_stream.roi.roi_resample (and roi_resample_reference);
// this file follows it step by step, in the same float32 arithmetic and the same order:
//
// 1. Geometry. ROI (b, x0, y0, x1, y1) in source pixel edge coordinates; output pixel (r, c)
//    of an h x w crop samples x = x0 + (c + 0.5) / w * (x1 - x0) - 0.5 in pixel-centre units
//    (pixel j's centre is j), likewise y.
// 2. Bilinear taps (align_corners=False): j0 = floor(x), j1 = j0 + 1, weights 1 - f and f;
//    a tap outside the image has weight 0 (zeros outside the frame).
// 3. Colour at each of the 2 x 2 luma taps: chroma upsampled 2x bilinearly with half-pixel
//    centres and edge clamping (chroma sample i sits at luma index 2i + 0.5, source position
//    max((j + 0.5) / 2 - 0.5, 0)), exactly as roi.upsample_chroma / F.interpolate do it; then
//    the affine YCbCr -> RGB map of roi.ycbcr_to_rgb, clamped to [0, 1].
// 4. Blend the taps: rows first (per tap column), then columns.
// 5. mode gray: 0.299 R + 0.587 G + 0.114 B; then (x - mean) / std; stored as float32 or
//    float16 (round to nearest even).
//
// One thread per output pixel; grid (ceil(w / 32), ceil(h / 8), min(K, 65535)) with a
// grid-stride loop over ROIs along z, so one launch serves many small face crops and one big
// letterbox per frame alike. The per-pixel code is __host__ __device__ and also runs on the CPU
// (exs_roi_resample_host), which is how the arithmetic is tested without a GPU.

#include "exe_stream_kernels.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int kMaxOutSide = 65535;  // grid.y = ceil(h / 8) stays far below the 65535 limit
constexpr int kMaxGridZ = 65535;

// Per output channel c: v = y * wy + off[c] + cb * wb[c] + cr * wr[c], as roi.ycbcr_to_rgb.
struct Colour {
    float wy;
    float off[3];
    float wb[3];
    float wr[3];
};

// Everything a thread needs, passed by value as the kernel's parameter block.
struct Params {
    exs_frames f;
    Colour colour;
    float mean[3];
    float std[3];
    int gray;      // 1: one grey channel, 0: RGB
    int channels;  // 1 or 3
    int out_h;
    int out_w;
    int num_rois;
};

// One bilinear tap pair along an axis: two (clamped, in-image) indices and their weights.
struct Tap {
    int i0, i1;
    float w0, w1;
};

__host__ __device__ inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

__host__ __device__ inline float load(const exs_plane& p, int b, int row, int col) {
    return (float)p.data[(int64_t)b * p.batch_stride + (int64_t)row * p.row_stride + (int64_t)col * p.col_stride];
}

// Luma taps at position `centre` (pixel-centre units) on an axis of `size` pixels (roi._taps).
__host__ __device__ inline Tap luma_tap(float centre, int size) {
    float lo = floorf(centre);
    const float frac = centre - lo;
    // Keeps the float -> int conversion defined for far-away (or non-finite) coordinates; any
    // lo below -1 or above size - 1 already puts both taps outside, so nothing else changes.
    lo = fminf(fmaxf(lo, -2.0f), (float)size);
    const int i0 = (int)lo;
    const int i1 = i0 + 1;
    Tap t;
    t.w0 = (i0 >= 0 && i0 < size) ? 1.0f - frac : 0.0f;
    t.w1 = (i1 >= 0 && i1 < size) ? frac : 0.0f;
    t.i0 = clamp_int(i0, 0, size - 1);
    t.i1 = clamp_int(i1, 0, size - 1);
    return t;
}

// The 2x chroma upsampling at luma index `luma` (0 <= luma < 2 * csize): two chroma indices
// and weights with half-pixel centres and edge clamping (roi._chroma_taps). The source
// position (luma + 0.5) / 2 - 0.5 is exact in float32 (a multiple of 0.25).
__host__ __device__ inline Tap chroma_tap(int luma, int csize) {
    const float src = fmaxf(((float)luma + 0.5f) * 0.5f - 0.5f, 0.0f);
    const float lo = floorf(src);
    Tap t;
    t.w1 = src - lo;
    t.w0 = 1.0f - t.w1;
    t.i0 = clamp_int((int)lo, 0, csize - 1);
    t.i1 = clamp_int(t.i0 + 1, 0, csize - 1);
    return t;
}

// Upsampled chroma at one luma pixel: rows blended first, then columns (as roi.roi_resample).
__host__ __device__ inline float chroma_at(const exs_plane& p, int b, const Tap& ty, const Tap& tx) {
    const float left = load(p, b, ty.i0, tx.i0) * ty.w0 + load(p, b, ty.i1, tx.i0) * ty.w1;
    const float right = load(p, b, ty.i0, tx.i1) * ty.w0 + load(p, b, ty.i1, tx.i1) * ty.w1;
    return left * tx.w0 + right * tx.w1;
}

// Clamped RGB in [0, 1] of luma pixel (row, col) of frame b.
__host__ __device__ inline void pixel_rgb(const Params& p, int b, int row, int col, float rgb[3]) {
    const Tap cy = chroma_tap(row, p.f.chroma_height);
    const Tap cx = chroma_tap(col, p.f.chroma_width);
    const float y = load(p.f.y, b, row, col);
    const float cb = chroma_at(p.f.u, b, cy, cx);
    const float cr = chroma_at(p.f.v, b, cy, cx);
    for (int c = 0; c < 3; ++c) {
        float v = y * p.colour.wy;
        v = v + p.colour.off[c];
        v = v + cb * p.colour.wb[c];
        v = v + cr * p.colour.wr[c];
        rgb[c] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
}

// The finished value(s) of output pixel (r, c) of one ROI: p.channels floats in out.
__host__ __device__ inline void resample_pixel(const Params& p, const float* roi, int r, int c, float out[3]) {
    float acc[3] = {0.0f, 0.0f, 0.0f};
    const float bf = roi[0];
    // Rows outside the batch (rejected by the Python side) give zeros instead of a bad read.
    if (bf >= 0.0f && bf < (float)p.f.batch) {
        const int b = (int)bf;  // truncation, as rois[:, 0].long()
        const float x0 = roi[1], y0 = roi[2], x1 = roi[3], y1 = roi[4];
        const float xs = x0 + ((float)c + 0.5f) / (float)p.out_w * (x1 - x0) - 0.5f;
        const float ys = y0 + ((float)r + 0.5f) / (float)p.out_h * (y1 - y0) - 0.5f;
        const Tap tx = luma_tap(xs, p.f.width);
        const Tap ty = luma_tap(ys, p.f.height);
        // A zero-weight tap adds exactly 0 (every value is finite), so it is skipped: the
        // padding of a letterbox and crops past the border cost no loads.
        for (int j = 0; j < 2; ++j) {
            const float wx = j ? tx.w1 : tx.w0;
            if (wx == 0.0f) continue;
            const int col = j ? tx.i1 : tx.i0;
            float column[3] = {0.0f, 0.0f, 0.0f};
            for (int i = 0; i < 2; ++i) {
                const float wy = i ? ty.w1 : ty.w0;
                if (wy == 0.0f) continue;
                float rgb[3];
                pixel_rgb(p, b, i ? ty.i1 : ty.i0, col, rgb);
                for (int k = 0; k < 3; ++k) column[k] = column[k] + rgb[k] * wy;
            }
            for (int k = 0; k < 3; ++k) acc[k] = acc[k] + column[k] * wx;
        }
    }
    if (p.gray) {
        const float g = acc[0] * 0.299f + acc[1] * 0.587f + acc[2] * 0.114f;
        out[0] = (g - p.mean[0]) / p.std[0];
    } else {
        for (int k = 0; k < 3; ++k) out[k] = (acc[k] - p.mean[k]) / p.std[k];
    }
}

__host__ __device__ inline void store(float* out, int64_t i, float v) { out[i] = v; }
__host__ __device__ inline void store(__half* out, int64_t i, float v) { out[i] = __float2half_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kBlockX * kBlockY) roi_resample_kernel(const Params p, const float* __restrict__ rois,
                                                                        T* __restrict__ out) {
    const int c = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int r = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    if (c >= p.out_w || r >= p.out_h) return;
    const int64_t plane = (int64_t)p.out_h * p.out_w;
    for (int k = (int)blockIdx.z; k < p.num_rois; k += (int)gridDim.z) {
        float v[3];
        resample_pixel(p, rois + (int64_t)k * 5, r, c, v);
        const int64_t base = (int64_t)k * p.channels * plane + (int64_t)r * p.out_w + c;
        store(out, base, v[0]);
        if (p.channels == 3) {  // constant indices keep v in registers
            store(out, base + plane, v[1]);
            store(out, base + 2 * plane, v[2]);
        }
    }
}

bool plane_ok(const exs_plane& p) {
    return p.data != nullptr && p.batch_stride >= 0 && p.row_stride >= 0 && p.col_stride >= 0;
}

// Checks the arguments and fills the parameter block; cudaErrorInvalidValue on a bad one.
int make_params(const exs_frames* f, const float* rois, int32_t num_rois, int32_t out_h, int32_t out_w, int32_t mode,
                const float* mean, const float* std, int32_t out_dtype, const void* out, Params* p) {
    if (f == nullptr || mean == nullptr || std == nullptr) return cudaErrorInvalidValue;
    if (!plane_ok(f->y) || !plane_ok(f->u) || !plane_ok(f->v)) return cudaErrorInvalidValue;
    if (f->batch <= 0 || f->height <= 0 || f->width <= 0 || f->chroma_height <= 0 || f->chroma_width <= 0)
        return cudaErrorInvalidValue;
    if (f->matrix != EXS_BT601 && f->matrix != EXS_BT709) return cudaErrorInvalidValue;
    if (f->full_range != 0 && f->full_range != 1) return cudaErrorInvalidValue;
    if (num_rois < 0 || out_h <= 0 || out_w <= 0 || out_h > kMaxOutSide || out_w > kMaxOutSide)
        return cudaErrorInvalidValue;
    if (mode != EXS_MODE_RGB && mode != EXS_MODE_GRAY) return cudaErrorInvalidValue;
    if (out_dtype != EXS_FLOAT32 && out_dtype != EXS_FLOAT16) return cudaErrorInvalidValue;
    if (num_rois > 0 && (rois == nullptr || out == nullptr)) return cudaErrorInvalidValue;

    p->f = *f;
    // roi.ycbcr_to_rgb, computed in double and rounded to float once, as torch does with
    // Python-float scalars: (Kr, Kb) per matrix; Y' = (Y - y_off) / y_scale, P = (C - 128) / c_scale.
    const double kr = f->matrix == EXS_BT709 ? 0.2126 : 0.299;
    const double kb = f->matrix == EXS_BT709 ? 0.0722 : 0.114;
    const double kg = 1.0 - kr - kb;
    const double y_off = f->full_range ? 0.0 : 16.0;
    const double y_scale = f->full_range ? 255.0 : 219.0;
    const double c_scale = f->full_range ? 255.0 : 224.0;
    const double wy = 1.0 / y_scale;
    const double wb[3] = {0.0, -2.0 * kb * (1.0 - kb) / kg / c_scale, 2.0 * (1.0 - kb) / c_scale};
    const double wr[3] = {2.0 * (1.0 - kr) / c_scale, -2.0 * kr * (1.0 - kr) / kg / c_scale, 0.0};
    p->colour.wy = (float)wy;
    for (int c = 0; c < 3; ++c) {
        p->colour.off[c] = (float)(-(wy * y_off + (wb[c] + wr[c]) * 128.0));
        p->colour.wb[c] = (float)wb[c];
        p->colour.wr[c] = (float)wr[c];
    }
    p->gray = mode == EXS_MODE_GRAY;
    p->channels = p->gray ? 1 : 3;
    for (int c = 0; c < 3; ++c) {
        p->mean[c] = c < p->channels ? mean[c] : 0.0f;
        p->std[c] = c < p->channels ? std[c] : 1.0f;
    }
    p->out_h = out_h;
    p->out_w = out_w;
    p->num_rois = num_rois;
    return cudaSuccess;
}

template <typename T>
void run_host(const Params& p, const float* rois, T* out) {
    const int64_t plane = (int64_t)p.out_h * p.out_w;
    for (int k = 0; k < p.num_rois; ++k)
        for (int r = 0; r < p.out_h; ++r)
            for (int c = 0; c < p.out_w; ++c) {
                float v[3];
                resample_pixel(p, rois + (int64_t)k * 5, r, c, v);
                const int64_t base = (int64_t)k * p.channels * plane + (int64_t)r * p.out_w + c;
                for (int ch = 0; ch < p.channels; ++ch) store(out, base + ch * plane, v[ch]);
            }
}

}  // namespace

extern "C" {

EXS_API int exs_roi_resample(const exs_frames* frames, const float* rois, int32_t num_rois, int32_t out_height,
                             int32_t out_width, int32_t mode, const float* mean, const float* std, int32_t out_dtype,
                             void* out, int32_t device, void* stream) {
    Params p;
    const int bad = make_params(frames, rois, num_rois, out_height, out_width, mode, mean, std, out_dtype, out, &p);
    if (bad != cudaSuccess) return bad;
    if (num_rois == 0) return cudaSuccess;

    // The caller's stream and memory may come from another CUDA runtime (torch's): runtime
    // calls work on the driver context current to the thread, and a device's primary context is
    // shared by every runtime in the process; cudaStream_t and CUstream are the same handle
    // (CUDA Runtime API, "Interactions with the CUDA Driver API"). Make the device's primary
    // context current for the launch and restore the previous one after.
    int previous = -1;
    cudaError_t err = cudaGetDevice(&previous);
    if (err != cudaSuccess) return err;
    if (previous != device && (err = cudaSetDevice(device)) != cudaSuccess) return err;

    (void)cudaGetLastError();  // the error returned below is this launch's own
    const dim3 block(kBlockX, kBlockY, 1);
    const dim3 grid((unsigned)((out_width + kBlockX - 1) / kBlockX), (unsigned)((out_height + kBlockY - 1) / kBlockY),
                    (unsigned)(num_rois < kMaxGridZ ? num_rois : kMaxGridZ));
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (out_dtype == EXS_FLOAT16)
        roi_resample_kernel<__half><<<grid, block, 0, s>>>(p, rois, static_cast<__half*>(out));
    else
        roi_resample_kernel<float><<<grid, block, 0, s>>>(p, rois, static_cast<float*>(out));
    err = cudaGetLastError();

    if (previous != device) {
        const cudaError_t restore = cudaSetDevice(previous);
        if (err == cudaSuccess) err = restore;
    }
    return err;
}

EXS_API int exs_roi_resample_host(const exs_frames* frames, const float* rois, int32_t num_rois, int32_t out_height,
                                  int32_t out_width, int32_t mode, const float* mean, const float* std,
                                  int32_t out_dtype, void* out) {
    Params p;
    const int bad = make_params(frames, rois, num_rois, out_height, out_width, mode, mean, std, out_dtype, out, &p);
    if (bad != cudaSuccess) return bad;
    if (out_dtype == EXS_FLOAT16)
        run_host(p, rois, static_cast<__half*>(out));
    else
        run_host(p, rois, static_cast<float*>(out));
    return cudaSuccess;
}

EXS_API int exs_check_device(int32_t device) {
    int previous = -1;
    cudaError_t err = cudaGetDevice(&previous);
    if (err != cudaSuccess) return err;
    if (previous != device && (err = cudaSetDevice(device)) != cudaSuccess) return err;
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, roi_resample_kernel<float>);
    if (err == cudaSuccess) err = cudaFuncGetAttributes(&attr, roi_resample_kernel<__half>);
    if (previous != device) {
        const cudaError_t restore = cudaSetDevice(previous);
        if (err == cudaSuccess) err = restore;
    }
    return err;
}

EXS_API int exs_abi_version(void) { return EXS_ABI_VERSION; }

EXS_API const char* exs_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
