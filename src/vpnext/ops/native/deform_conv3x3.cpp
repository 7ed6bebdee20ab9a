// vpnext::deform_conv3x3's forward on CPU (float32): bilinear sampling fused with the GEMM.
//
// The output positions of the flattened (B, H, W) grid are cut into blocks. For each block a
// thread samples the (rows, 9 * C) columns straight from the channels-last input into a buffer
// of its own that stays in cache, then multiplies them with the (9 * C, Cout) weight matrix into
// the block's output rows. No (B * H * W * 9, C) gather table, index or weight tensor is made:
// corner positions and bilinear weights live in registers.
//
// Semantics are those of torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1):
// tap k = 3 * i + j of position (h, w) samples x at (h + i - 1 + dy_k, w + j - 1 + dx_k), with
// (dy_k, dx_k) = offset[:, 2k], offset[:, 2k + 1]; corners outside the image read zero.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>
#include <vector>

namespace {

constexpr int64_t kTaps = 9;

// dst = wa * a + wb * b + wc * c + wd * d over n channels (the four corners of one sample).
inline void blend(float* __restrict__ dst, const float* __restrict__ a, const float* __restrict__ b,
                  const float* __restrict__ c, const float* __restrict__ d, float wa, float wb, float wc,
                  float wd, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = wa * a[i] + wb * b[i] + wc * c[i] + wd * d[i];
  }
}

// The columns of positions [first, last): rows of 9 * C values, tap-major, then channel.
void sample_block(const float* rows, const float* offsets, const float* zeros, float* cols, int64_t first,
                  int64_t last, int64_t height, int64_t width, int64_t channels) {
  const int64_t plane = height * width;
  const float fh = static_cast<float>(height), fw = static_cast<float>(width);
  for (int64_t p = first; p < last; ++p) {
    const int64_t h = (p % plane) / width, w = p % width;
    const float* image = rows + (p / plane) * plane * channels;
    const float* off = offsets + p * 2 * kTaps;
    float* dst = cols + (p - first) * kTaps * channels;
    for (int64_t k = 0; k < kTaps; ++k, dst += channels) {
      // The integer base first, then the offset: torchvision's rounding.
      const float py = static_cast<float>(h + k / 3 - 1) + off[2 * k];
      const float px = static_cast<float>(w + k % 3 - 1) + off[2 * k + 1];
      if (!(py > -1.f && py < fh && px > -1.f && px < fw)) {  // a pixel or more outside, or NaN
        std::fill(dst, dst + channels, 0.f);
        continue;
      }
      const float y0f = std::floor(py), x0f = std::floor(px);
      const float fy = py - y0f, fx = px - x0f, gy = 1.f - fy, gx = 1.f - fx;
      const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
      const bool top = y0 >= 0, bottom = y0 + 1 < height, left = x0 >= 0, right = x0 + 1 < width;
      const float* row0 = image + (y0 * width + x0) * channels;
      const float* row1 = row0 + width * channels;
      blend(dst, top && left ? row0 : zeros, top && right ? row0 + channels : zeros,
            bottom && left ? row1 : zeros, bottom && right ? row1 + channels : zeros, gy * gx, gy * fx,
            fy * gx, fy * fx, channels);
    }
  }
}

}  // namespace

// x (B, C, H, W), offset (B, 18, H, W), weight (Cout, C, 3, 3), bias (Cout,) or None; float32 on
// the CPU, any memory layout. Returns (B, Cout, H, W) stored channels-last. `block` is the number
// of output positions per GEMM.
torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& offset, const torch::Tensor& weight,
                      const c10::optional<torch::Tensor>& bias, int64_t block) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "deform_conv3x3: CPU float32 x expected");
  TORCH_CHECK(offset.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "deform_conv3x3: float32 offset and weight expected");
  TORCH_CHECK(block > 0, "deform_conv3x3: block must be positive");
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_channels = weight.size(0);
  const auto rows = x.permute({0, 2, 3, 1}).contiguous();           // (B, H, W, C); no copy if channels-last
  const auto offsets = offset.permute({0, 2, 3, 1}).contiguous();   // (B, H, W, 18)
  const auto matrix = weight.permute({2, 3, 1, 0}).reshape({kTaps * channels, out_channels}).contiguous();
  const int64_t positions = batch * height * width;
  auto out = at::empty({positions, out_channels}, x.options());
  const std::vector<float> zeros(channels, 0.f);
  const float* rows_data = rows.data_ptr<float>();
  const float* offsets_data = offsets.data_ptr<float>();
  // The GEMMs below are dispatcher calls on OpenMP's threads, which do not inherit this thread's
  // autograd and inference-mode state: without it, writing into `out` (an inference tensor under
  // torch.inference_mode) from another thread is refused.
  const at::ThreadLocalState state;
  at::parallel_for(0, (positions + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    auto cols = at::empty({block, kTaps * channels}, x.options());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = i * block, count = std::min(positions, first + block) - first;
      sample_block(rows_data, offsets_data, zeros.data(), cols.data_ptr<float>(), first, first + count, height,
                   width, channels);
      auto target = out.narrow(0, first, count);
      if (bias.has_value()) {
        at::addmm_out(target, *bias, cols.narrow(0, 0, count), matrix);
      } else {
        at::mm_out(target, cols.narrow(0, 0, count), matrix);
      }
    }
  });
  return out.view({batch, height, width, out_channels}).permute({0, 3, 1, 2});
}

// How many threads at::parallel_for spreads `tasks` one-item tasks over in this build: torch's thread
// count where the extension was compiled with OpenMP (torch's backend), 1 where it was not, since
// at::parallel_for then compiles to a plain loop.
int64_t parallel_threads(int64_t tasks) {
  std::mutex mutex;
  std::set<int> seen;
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(mutex);
    seen.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(seen.size());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "vpnext::deform_conv3x3 forward, CPU float32 (sampling fused with the GEMM)");
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for uses for `tasks` tasks");
}
