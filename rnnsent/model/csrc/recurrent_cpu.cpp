// Fused GRU / LSTM / Elman-RNN training kernels for the CPU (float32): one direction of one layer per call.
// Stacked and bidirectional layers call it once per layer and direction (rnnsent/nn.py): a lower
// layer hands its full sequence of states to the next, and the reverse direction runs on each row's real
// steps reversed, so the kernel itself only ever runs forward in time.
//
// Why this exists: at rnnsent's size (batch 64, 100 units) a time step is ~4 MFLOP of matrix work,
// and PyTorch's stock CPU layers spend more time than that dispatching the dozen small autograd ops
// of each step (forward and backward). Here one call runs the whole sequence:
//   * the input projection x @ W_ih^T + b_ih for all steps is done outside, in one large product;
//   * each step is one small GEMM (h @ W_hh^T) plus one vectorised loop for the gates;
//   * the batch is cut into chunks of a fixed number of rows (kChunkRows, whatever the thread count), and
//     a thread runs one chunk through all time steps alone, so threads never wait for each other inside
//     the time loop. Threads take the next chunk as they free up (an atomic counter), so a thread that
//     the OS deschedules on a busy machine delays only its own chunk, not a fixed share of the batch;
//   * backward adds each step's share of dW_hh and db_hh into per-chunk sums while that step's
//     gradients are still in cache, and adds the chunks' sums in chunk order at the end. Every float
//     operation therefore happens in the same order for any thread count: results are bit-identical
//     for 1, 2 or 64 threads (they depend on the batch and kChunkRows only).
// Gate order and equations are PyTorch's (and so Keras', after rnnsent's gate permutation):
//   GRU  r, z, n:   n = tanh(x_n + r * (h W_hn + b_hn)),  h' = n + z * (h - n)
//   LSTM i, f, g, o: c' = f c + i g,  h' = o tanh(c')
//   RNN:            h' = tanh(x + h W + b), or relu(x + h W + b)
// The initial state is h0 (and the LSTM's c0), or zero when they are empty. Each sequence's state after its last
// real step (lengths[b]) is returned (the LSTM's cell state too), and with `full` every step's state; a chunk of
// rows runs up to its longest row's length (zeros after), so the steps after a row's last real one are computed
// only up to there (a length-bucketed or sorted batch has few) and receive no gradient. Backward also returns the
// gradients of h0 and c0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

// The BLAS that PyTorch links (MKL in the x86 wheels) exports the Fortran sgemm_. Called directly, the
// per-step products in a thread's time loop ran ~25% faster than through at::mm (measured). Weak, so
// that a PyTorch built without it still loads this file and takes at::mm instead.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's per-thread thread count (0 restores the global one), Fortran interface (the one PyTorch's wheels
// export; it takes a pointer). A chunk's small products must run on its own thread: a multi-threaded MKL
// call opens a parallel region per time step, and its rounding may depend on how many threads it uses.
extern "C" int mkl_set_num_threads_local_(const int* nt) __attribute__((weak));

namespace {

// exp for float32, branch-free so that the gate loops vectorise (Cephes' polynomial, ~2 ulp). The clamps
// need -fno-trapping-math to become vector min/max without AVX-512 (fused.py passes it).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float k = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
inline float tanh_(float x) { return 1.0f - 2.0f / (1.0f + fast_exp(2.0f * x)); }

// ---- per-step gate loops: plain pointers with __restrict__ so that GCC vectorises them ----------

// x: input projections [nb, 3H]; g: h W_hh^T [nb, 3H]; bias: b_hh [3H]; h: state [nb, H].
// Saves r, z, n into act [nb, 3H] and (h W_hn + b_hn) into hn [nb, H]; writes h' into out.
void gru_step_forward(int64_t nb, int64_t H, const float* __restrict__ x, const float* __restrict__ g,
                      const float* __restrict__ bias, const float* __restrict__ h, float* __restrict__ act,
                      float* __restrict__ hn, float* __restrict__ out) {
  for (int64_t b = 0; b < nb; ++b, x += 3 * H, g += 3 * H, h += H, act += 3 * H, hn += H, out += H) {
    for (int64_t j = 0; j < H; ++j) {
      const float r = sigmoid(x[j] + g[j] + bias[j]);
      const float z = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
      const float ghn = g[2 * H + j] + bias[2 * H + j];
      const float n = tanh_(x[2 * H + j] + r * ghn);
      act[j] = r;
      act[H + j] = z;
      act[2 * H + j] = n;
      hn[j] = ghn;
      out[j] = n + z * (h[j] - n);
    }
  }
}

// dL/dh' arrives in two parts, d (through W_hh, plus any output gradient) and dh (through z).
// Writes dL/d(input projection) into dx [nb, 3H], dL/d(h W_hh^T + b_hh) into dg [nb, 3H] (it differs
// from dx only in the n block, which the reset gate scales), and replaces dh by the part of dL/dh that
// bypasses W_hh (through z).
void gru_step_backward(int64_t nb, int64_t H, const float* __restrict__ act, const float* __restrict__ hn,
                       const float* __restrict__ h, const float* __restrict__ d, float* __restrict__ dx,
                       float* __restrict__ dg, float* __restrict__ dh) {
  for (int64_t b = 0; b < nb; ++b, act += 3 * H, hn += H, h += H, d += H, dx += 3 * H, dg += 3 * H, dh += H) {
    for (int64_t j = 0; j < H; ++j) {
      const float r = act[j], z = act[H + j], n = act[2 * H + j], dj = d[j] + dh[j];
      const float dn = dj * (1.0f - z) * (1.0f - n * n);
      const float dz = dj * (h[j] - n) * z * (1.0f - z);
      const float dr = dn * hn[j] * r * (1.0f - r);
      dx[j] = dr;
      dx[H + j] = dz;
      dx[2 * H + j] = dn;
      dg[j] = dr;
      dg[H + j] = dz;
      dg[2 * H + j] = dn * r;
      dh[j] = dj * z;
    }
  }
}

// x: input projections [nb, 4H]; g: h W_hh^T [nb, 4H]; bias: b_hh [4H]; c: cell state [nb, H].
// Saves i, f, g, o into act [nb, 4H]; writes c' and h'.
void lstm_step_forward(int64_t nb, int64_t H, const float* __restrict__ x, const float* __restrict__ g,
                       const float* __restrict__ bias, const float* __restrict__ c, float* __restrict__ act,
                       float* __restrict__ c_out, float* __restrict__ h_out) {
  for (int64_t b = 0; b < nb; ++b, x += 4 * H, g += 4 * H, c += H, act += 4 * H, c_out += H, h_out += H) {
    for (int64_t j = 0; j < H; ++j) {
      const float i = sigmoid(x[j] + g[j] + bias[j]);
      const float f = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
      const float gg = tanh_(x[2 * H + j] + g[2 * H + j] + bias[2 * H + j]);
      const float o = sigmoid(x[3 * H + j] + g[3 * H + j] + bias[3 * H + j]);
      const float cn = f * c[j] + i * gg;
      act[j] = i;
      act[H + j] = f;
      act[2 * H + j] = gg;
      act[3 * H + j] = o;
      c_out[j] = cn;
      h_out[j] = o * tanh_(cn);
    }
  }
}

// dh: dL/dh' [nb, H]; dc: dL/dc' carried from the next step [nb, H], replaced by dL/dc.
// Writes dL/d(gate pre-activations) into dx [nb, 4H] (the same for the input and recurrent sides).
void lstm_step_backward(int64_t nb, int64_t H, const float* __restrict__ act, const float* __restrict__ c_prev,
                        const float* __restrict__ c, const float* __restrict__ dh, float* __restrict__ dc,
                        float* __restrict__ dx) {
  for (int64_t b = 0; b < nb; ++b, act += 4 * H, c_prev += H, c += H, dh += H, dc += H, dx += 4 * H) {
    for (int64_t j = 0; j < H; ++j) {
      const float i = act[j], f = act[H + j], gg = act[2 * H + j], o = act[3 * H + j];
      const float tc = tanh_(c[j]);
      const float dcj = dc[j] + dh[j] * o * (1.0f - tc * tc);
      dx[j] = dcj * gg * i * (1.0f - i);
      dx[H + j] = dcj * c_prev[j] * f * (1.0f - f);
      dx[2 * H + j] = dcj * i * (1.0f - gg * gg);
      dx[3 * H + j] = dh[j] * tc * o * (1.0f - o);
      dc[j] = dcj * f;
    }
  }
}

void rnn_step_forward(int64_t nb, int64_t H, const float* __restrict__ x, const float* __restrict__ g,
                      const float* __restrict__ bias, float* __restrict__ out) {
  for (int64_t b = 0; b < nb; ++b, x += H, g += H, out += H)
    for (int64_t j = 0; j < H; ++j) out[j] = tanh_(x[j] + g[j] + bias[j]);
}

void rnn_step_backward(int64_t n, const float* __restrict__ h, const float* __restrict__ d, float* __restrict__ dx) {
  for (int64_t k = 0; k < n; ++k) dx[k] = d[k] * (1.0f - h[k] * h[k]);
}

// The Elman RNN with nonlinearity="relu": h' = max(0, x + h W + b); its derivative is 1 where h' > 0, as PyTorch's.
void relu_step_forward(int64_t nb, int64_t H, const float* __restrict__ x, const float* __restrict__ g,
                       const float* __restrict__ bias, float* __restrict__ out) {
  for (int64_t b = 0; b < nb; ++b, x += H, g += H, out += H)
    for (int64_t j = 0; j < H; ++j) {
      const float v = x[j] + g[j] + bias[j];
      out[j] = v > 0.0f ? v : 0.0f;
    }
}

void relu_step_backward(int64_t n, const float* __restrict__ h, const float* __restrict__ d, float* __restrict__ dx) {
  for (int64_t k = 0; k < n; ++k) dx[k] = h[k] > 0.0f ? d[k] : 0.0f;
}

// Row-major C[M, N] = op(A)[M, K] @ op(B)[K, N] + beta * C, op(X) = X^T where trans_X, for the small
// per-step products. BLAS is column-major: it computes C^T = op(B)^T op(A)^T, hence the swapped operands.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  if (sgemm_ != nullptr) {
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    sgemm_(trans_b ? "T" : "N", trans_a ? "T" : "N", &m, &n, &k, &one, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  auto a = trans_a ? at::from_blob(const_cast<float*>(A), {K, M}, {lda, 1}, opts).t()
                   : at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, opts);
  auto b = trans_b ? at::from_blob(const_cast<float*>(B), {N, K}, {ldb, 1}, opts).t()
                   : at::from_blob(const_cast<float*>(B), {K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == 0.0f) {
    at::mm_out(c, a, b);
  } else {
    at::addmm_out(c, c, a, b, beta, 1.0f);
  }
}

// acc[j] += sum over rows of d[row, j], for the bias gradient.
void add_column_sums(int64_t rows, int64_t cols, const float* __restrict__ d, float* __restrict__ acc) {
  for (int64_t r = 0; r < rows; ++r, d += cols)
    for (int64_t j = 0; j < cols; ++j) acc[j] += d[j];
}

// ---- sequence drivers ---------------------------------------------------------------------------

int64_t gates_of(int64_t cell) { return cell == 0 ? 4 : (cell == 1 ? 3 : 1); }  // 0 lstm, 1 gru, 2 rnn, 3 rnn relu

bool cpu_float_contiguous(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

void check_inputs(const at::Tensor& x, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& lengths,
                  const at::Tensor& h0, const at::Tensor& c0, int64_t cell) {
  const int64_t gates = gates_of(cell);
  TORCH_CHECK(cell >= 0 && cell <= 3, "rnnsent fused kernel: unknown cell ", cell);
  TORCH_CHECK(x.dim() == 3 && cpu_float_contiguous(x),
              "rnnsent fused kernel: input projections must be a contiguous float32 CPU tensor [T, B, G*H]");
  TORCH_CHECK(w_hh.dim() == 2 && cpu_float_contiguous(w_hh) && cpu_float_contiguous(b_hh),
              "rnnsent fused kernel: W_hh and b_hh must be contiguous float32 CPU tensors");
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(w_hh.size(0) == gates * H && x.size(2) == gates * H && b_hh.numel() == gates * H,
              "rnnsent fused kernel: weight shapes do not match the input projections");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == x.size(1) && lengths.scalar_type() == at::kLong,
              "rnnsent fused kernel: lengths must be an int64 tensor [B]");
  for (const at::Tensor* s : {&h0, &c0}) {
    TORCH_CHECK(s->numel() == 0 || (s->dim() == 2 && s->size(0) == x.size(1) && s->size(1) == H &&
                                    cpu_float_contiguous(*s)),
                "rnnsent fused kernel: initial states must be contiguous float32 CPU tensors [B, H] or empty");
  }
  TORCH_CHECK(c0.numel() == 0 || cell == 0, "rnnsent fused kernel: only the LSTM has a cell state");
}

// Rows per chunk. Smaller chunks would let more threads share a batch of 64 and balance better, but each
// chunk pays for its own per-step GEMMs (W_hh packed per call, dW_hh accumulated with K = rows): 16 rows
// cost one thread 12-23% more kernel time than 64 for GRU and SimpleRNN, 32 rows a few percent, within
// the shared machine's noise (in-process A/B, medians; see README). Changing it
// changes the rounding of results (not the maths), so it is a constant, never derived from the thread
// count or the load.
constexpr int64_t kChunkRows = 32;

int64_t chunk_count(int64_t B) { return (B + kChunkRows - 1) / kChunkRows; }

// Runs body(block, r0, r1) for every block [r0, r1) of `rows` rows out of n, each on one thread with MKL held to
// that thread. Each thread takes the next untaken block until none is left (dynamic scheduling); which thread runs
// which block changes nothing in the results, since a block's work depends on its rows only.
template <typename Body>
void for_each_block(int64_t n, int64_t rows, const Body& body) {
  const int64_t blocks = (n + rows - 1) / rows;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const int one = 1;
    const int saved = mkl_set_num_threads_local_ != nullptr ? mkl_set_num_threads_local_(&one) : 0;
    for (int64_t c = next.fetch_add(1); c < blocks; c = next.fetch_add(1))
      body(c, c * rows, std::min(n, (c + 1) * rows));
    if (mkl_set_num_threads_local_ != nullptr) mkl_set_num_threads_local_(&saved);
  });
}

// The batch's chunks [b0, b1) of kChunkRows rows: body(chunk, b0, b1).
template <typename Body>
void for_each_chunk(int64_t B, const Body& body) {
  for_each_block(B, kChunkRows, body);
}

// The steps a chunk runs: up to its longest row's length. A PackedSequence's rows come sorted by length, so its
// chunks stop where their rows do; the steps after a row's own length, up to that, are run but not used.
int64_t chunk_steps(const int64_t* len, int64_t b0, int64_t b1) {
  int64_t steps = 0;
  for (int64_t b = b0; b < b1; ++b) steps = std::max(steps, len[b]);
  return steps;
}

// out = parts[0] + parts[1] + ... in that order, elementwise: the same bits whatever ran the parts. Serial when
// small (a few hundred kB are not worth waking other threads for); larger sums split the elements, not the order.
at::Tensor sum_in_order(const at::Tensor& parts) {
  const int64_t n = parts.size(0), m = parts[0].numel();
  auto out = at::empty(parts.sizes().slice(1), parts.options());
  float* o = out.data_ptr<float>();
  const float* p = parts.data_ptr<float>();
  at::parallel_for(0, m, int64_t{1} << 18, [&](int64_t j0, int64_t j1) {
    std::memcpy(o + j0, p + j0, (j1 - j0) * sizeof(float));
    for (int64_t k = 1; k < n; ++k) {
      const float* __restrict__ q = p + k * m;
      for (int64_t j = j0; j < j1; ++j) o[j] += q[j];
    }
  });
  return out;
}

// Returns {last state [B, H], hs, act, extra, last cell state}. With save (training) hs, act and extra hold
// every step for backward: hs [T+1, B, H] the states (hs[t] before step t, hs[0] = h0), act [T, B, G*H] the gate
// activations, and extra the LSTM's cell states [T+1, B, H] or the GRU's h W_hn + b_hn [T, B, H]. Without save
// (inference) they are two-slot and one-slot scratch, so memory does not grow with the review length;
// `full` keeps every state in hs all the same (a lower layer's output, or the sequence asked for). The last
// cell state [B, H] is the LSTM's (empty for the other cells).
std::vector<at::Tensor> sequence_forward(int64_t cell, const at::Tensor& x, const at::Tensor& w_hh,
                                         const at::Tensor& b_hh, const at::Tensor& lengths, const at::Tensor& h0,
                                         const at::Tensor& c0, bool save, bool full) {
  const int64_t G = gates_of(cell);
  check_inputs(x, w_hh, b_hh, lengths, h0, c0, cell);
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(len[b] >= 1 && len[b] <= T, "rnnsent fused kernel: lengths must lie in [1, T]");
  const bool keep = save || full;  // every state in hs
  const int64_t state_slots = save ? T + 1 : 2, step_slots = save ? T : 1;
  auto opts = x.options();
  auto hs = at::empty({keep ? T + 1 : 2, B, H}, opts);
  if (h0.numel() > 0) {
    hs[0].copy_(h0);
  } else {
    hs[0].zero_();
  }
  at::Tensor act = at::empty({0}, opts), extra = at::empty({0}, opts);  // the Elman RNN needs only hs
  at::Tensor last_c = at::empty({0}, opts);
  if (cell == 0) {
    act = at::empty({step_slots, B, 4 * H}, opts);
    extra = at::empty({state_slots, B, H}, opts);
    if (c0.numel() > 0) {
      extra[0].copy_(c0);
    } else {
      extra[0].zero_();
    }
    last_c = at::empty({B, H}, opts);
  } else if (cell == 1) {
    act = at::empty({step_slots, B, 3 * H}, opts);
    extra = at::empty({step_slots, B, H}, opts);
  }
  auto last = at::empty({B, H}, opts);
  const float* bp = b_hh.data_ptr<float>();  // contiguous: check_inputs says so
  const float* xp = x.data_ptr<float>();
  float* hsp = hs.data_ptr<float>();
  float* actp = act.data_ptr<float>();
  float* extrap = extra.data_ptr<float>();
  float* lastp = last.data_ptr<float>();
  float* last_cp = cell == 0 ? last_c.data_ptr<float>() : nullptr;
  const float* wp = w_hh.data_ptr<float>();
  for_each_chunk(B, [&](int64_t, int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0, Tc = chunk_steps(len, b0, b1);
    auto g = at::empty({nb, G * H}, opts);
    float* gp = g.data_ptr<float>();
    if (keep)  // the steps after the chunk's longest row: zeros, never run
      for (int64_t t = Tc; t < T; ++t) std::memset(hsp + ((t + 1) * B + b0) * H, 0, nb * H * sizeof(float));
    for (int64_t t = 0; t < Tc; ++t) {
      // s: slots of the states in hs, c: of the LSTM's cell states, a: of the activations
      const int64_t s0 = keep ? t : (t & 1), s1 = keep ? t + 1 : ((t + 1) & 1);
      const int64_t c0 = save ? t : (t & 1), c1 = save ? t + 1 : ((t + 1) & 1), a = save ? t : 0;
      // h W_hh^T; the bias is added in the gate loop
      gemm(false, true, nb, G * H, H, hsp + (s0 * B + b0) * H, H, wp, H, 0.0f, gp, G * H);
      const float* xt = xp + (t * B + b0) * G * H;
      float* h_next = hsp + (s1 * B + b0) * H;
      if (cell == 0) {
        lstm_step_forward(nb, H, xt, gp, bp, extrap + (c0 * B + b0) * H, actp + (a * B + b0) * 4 * H,
                          extrap + (c1 * B + b0) * H, h_next);
      } else if (cell == 1) {
        gru_step_forward(nb, H, xt, gp, bp, hsp + (s0 * B + b0) * H, actp + (a * B + b0) * 3 * H,
                         extrap + (a * B + b0) * H, h_next);
      } else if (cell == 2) {
        rnn_step_forward(nb, H, xt, gp, bp, h_next);
      } else {
        relu_step_forward(nb, H, xt, gp, bp, h_next);
      }
      for (int64_t b = b0; b < b1; ++b) {  // the state after each sequence's last real step
        if (len[b] != t + 1) continue;
        std::memcpy(lastp + b * H, h_next + (b - b0) * H, H * sizeof(float));
        if (cell == 0) std::memcpy(last_cp + b * H, extrap + (c1 * B + b) * H, H * sizeof(float));
      }
    }
  });
  return {last, hs, act, extra, last_c};
}

// grad_last: dL/d(last state) [B, H]; grad_last_c: dL/d(last cell state) [B, H] (LSTM) or empty; grad_seq:
// dL/d(every step's state) [T, B, H], or empty when only the last state was used (its steps past a row's length
// get none: they are not part of the output).
// Returns {dL/dx [T, B, G*H], dL/dW_hh, dL/db_hh, dL/dh0 [B, H], dL/dc0 [B, H] (LSTM; else empty)}.
std::vector<at::Tensor> sequence_backward(int64_t cell, const at::Tensor& grad_last_in, const at::Tensor& grad_last_c_in,
                                          const at::Tensor& grad_seq_in, const at::Tensor& w_hh,
                                          const at::Tensor& lengths, const at::Tensor& hs, const at::Tensor& act,
                                          const at::Tensor& extra) {
  const int64_t T = hs.size(0) - 1, B = hs.size(1), H = hs.size(2), GH = gates_of(cell) * H;
  const bool has_seq = grad_seq_in.numel() > 0, has_last_c = grad_last_c_in.numel() > 0;
  TORCH_CHECK(cpu_float_contiguous(w_hh) && w_hh.size(0) == GH && w_hh.size(1) == H &&
                  grad_last_in.size(0) == B && grad_last_in.size(1) == H && lengths.size(0) == B &&
                  (!has_seq || (grad_seq_in.dim() == 3 && grad_seq_in.size(0) == T && grad_seq_in.size(1) == B &&
                                grad_seq_in.size(2) == H)) &&
                  (!has_last_c || (cell == 0 && grad_last_c_in.dim() == 2 && grad_last_c_in.size(0) == B &&
                                   grad_last_c_in.size(1) == H)),
              "rnnsent fused kernel: backward inputs do not match the saved forward state");
  const auto grad_last = grad_last_in.to(at::kFloat).contiguous();
  const auto grad_last_c = has_last_c ? grad_last_c_in.to(at::kFloat).contiguous() : grad_last_c_in;
  const auto grad_seq = has_seq ? grad_seq_in.to(at::kFloat).contiguous() : grad_seq_in;
  const float* gsp = has_seq ? grad_seq.data_ptr<float>() : nullptr;
  const float* glcp = has_last_c ? grad_last_c.data_ptr<float>() : nullptr;
  auto opts = hs.options();
  auto dx = at::empty({T, B, GH}, opts);
  auto dh0 = at::empty({B, H}, opts);
  auto dc0 = cell == 0 ? at::empty({B, H}, opts) : at::empty({0}, opts);
  float* dh0p = dh0.data_ptr<float>();
  float* dc0p = cell == 0 ? dc0.data_ptr<float>() : nullptr;
  // Each chunk sums its rows' dW_hh and db_hh while their gradients are still in cache; the partial
  // sums are added in chunk order at the end (a [GH, H] matrix per chunk, not a pass over every step).
  const int64_t parts = chunk_count(B);
  auto dw_part = at::empty({parts, GH, H}, opts);  // the first step's GEMM overwrites it (beta 0)
  auto db_part = at::zeros({parts, GH}, opts);
  const int64_t* len = lengths.data_ptr<int64_t>();
  const float* hsp = hs.data_ptr<float>();
  const float* glp = grad_last.data_ptr<float>();
  const float* wp = w_hh.data_ptr<float>();
  const float* actp = act.data_ptr<float>();
  const float* extrap = extra.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  for_each_chunk(B, [&](int64_t part, int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0, Tc = chunk_steps(len, b0, b1);
    for (int64_t t = Tc; t < T; ++t) std::memset(dxp + (t * B + b0) * GH, 0, nb * GH * sizeof(float));
    float* dwp = dw_part[part].data_ptr<float>();
    float* dbp = db_part[part].data_ptr<float>();
    auto dh = at::zeros({nb, H}, opts);         // dL/dh_{t+1} entering step t (GRU: the part through W_hh)
    auto dh_direct = at::zeros({nb, H}, opts);  // GRU: the part that bypasses W_hh
    auto dc = cell == 0 ? at::zeros({nb, H}, opts) : at::Tensor();
    auto dg = cell == 1 ? at::empty({nb, 3 * H}, opts) : at::Tensor();
    float* dhp = dh.data_ptr<float>();
    float* dh_directp = dh_direct.data_ptr<float>();
    float* dcp = cell == 0 ? dc.data_ptr<float>() : nullptr;
    float* dgp = cell == 1 ? dg.data_ptr<float>() : nullptr;
    for (int64_t t = Tc - 1; t >= 0; --t) {
      // A sequence whose last real step is t receives its output gradient here.
      for (int64_t b = b0; b < b1; ++b) {
        float* d = dhp + (b - b0) * H;
        if (len[b] == t + 1) {
          const float* gl = glp + b * H;
          for (int64_t j = 0; j < H; ++j) d[j] += gl[j];
          if (has_last_c) {  // the LSTM's last cell state: its gradient enters the carried dL/dc here
            const float* glc = glcp + b * H;
            float* dcb = dcp + (b - b0) * H;
            for (int64_t j = 0; j < H; ++j) dcb[j] += glc[j];
          }
        }
        if (has_seq && t < len[b]) {  // this step's own output gradient
          const float* gs = gsp + (t * B + b) * H;
          for (int64_t j = 0; j < H; ++j) d[j] += gs[j];
        }
      }
      float* dxt = dxp + (t * B + b0) * GH;
      const float* h_prev = hsp + (t * B + b0) * H;
      float* drec = dxt;  // dL/d(h W_hh^T + b_hh): dL/dx itself, except for the GRU
      if (cell == 0) {
        lstm_step_backward(nb, H, actp + (t * B + b0) * 4 * H, extrap + (t * B + b0) * H,
                           extrap + ((t + 1) * B + b0) * H, dhp, dcp, dxt);
      } else if (cell == 1) {
        drec = dgp;
        gru_step_backward(nb, H, actp + (t * B + b0) * 3 * H, extrap + (t * B + b0) * H, h_prev, dhp, dxt, drec,
                          dh_directp);
      } else if (cell == 2) {
        rnn_step_backward(nb * H, hsp + ((t + 1) * B + b0) * H, dhp, dxt);
      } else {
        relu_step_backward(nb * H, hsp + ((t + 1) * B + b0) * H, dhp, dxt);
      }
      gemm(false, false, nb, H, GH, drec, GH, wp, H, 0.0f, dhp, H);        // dL/dh_t = drec W_hh
      gemm(true, false, GH, H, nb, drec, GH, h_prev, H, t == Tc - 1 ? 0.0f : 1.0f, dwp, H);  // dW_hh += drec^T h_t
      add_column_sums(nb, GH, drec, dbp);                                  // db_hh += sum of drec
    }
    // What is left after step 0 is the initial states' gradient (the GRU's in two parts, through W_hh and z).
    for (int64_t k = 0; k < nb * H; ++k) dh0p[b0 * H + k] = dhp[k] + (cell == 1 ? dh_directp[k] : 0.0f);
    if (cell == 0) std::memcpy(dc0p + b0 * H, dcp, nb * H * sizeof(float));
  });
  return {dx, sum_in_order(dw_part), sum_in_order(db_part), dh0, dc0};
}

// ---- the input projection's backward ------------------------------------------------------------------------
// x_proj = x W^T + b over N = T*B rows runs as PyTorch's F.linear (its forward is deterministic: every row is one
// thread's). Its backward is not, left to MKL: for some shapes (a long N against a small W) MKL splits the sum over
// N between threads, and dW's rounding then depends on the thread count. Here the sum over N is cut into at most
// kProjParts blocks of a size that depends on N only, each one thread's product, added in block order; dx's rows
// are cut into blocks the same way. grad [N, G], x [N, E], w [G, E] -> {dx [N, E], dW [G, E], db [G]} (each empty
// where not needed).
constexpr int64_t kProjParts = 16, kProjRows = 128;

std::vector<at::Tensor> projection_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                            bool need_x, bool need_w, bool need_b) {
  TORCH_CHECK(grad.dim() == 2 && x.dim() == 2 && w.dim() == 2 && cpu_float_contiguous(grad) &&
                  cpu_float_contiguous(x) && cpu_float_contiguous(w) && grad.size(0) == x.size(0) &&
                  grad.size(1) == w.size(0) && x.size(1) == w.size(1),
              "rnnsent fused kernel: projection gradients need contiguous float32 CPU grad [N, G], x [N, E], w [G, E]");
  const int64_t N = grad.size(0), G = grad.size(1), E = x.size(1);
  auto opts = grad.options();
  at::Tensor dx = at::empty({0}, opts), dw = at::empty({0}, opts), db = at::empty({0}, opts);
  const float* gp = grad.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  if (need_x) {
    dx = at::empty({N, E}, opts);
    float* dxp = dx.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    for_each_block(N, kProjRows, [&](int64_t, int64_t r0, int64_t r1) {
      gemm(false, false, r1 - r0, E, G, gp + r0 * G, G, wp, E, 0.0f, dxp + r0 * E, E);  // dx = grad W
    });
  }
  if (need_w || need_b) {
    if (N == 0) return {dx, at::zeros({G, E}, opts), at::zeros({G}, opts)};
    const int64_t rows = std::max(kProjRows, (N + kProjParts - 1) / kProjParts), parts = (N + rows - 1) / rows;
    auto dw_part = at::empty({need_w ? parts : 0, G, E}, opts);
    auto db_part = at::zeros({need_b ? parts : 0, G}, opts);
    for_each_block(N, rows, [&](int64_t part, int64_t r0, int64_t r1) {
      if (need_w)  // dW = grad^T x over this block's rows
        gemm(true, false, G, E, r1 - r0, gp + r0 * G, G, xp + r0 * E, E, 0.0f, dw_part[part].data_ptr<float>(), E);
      if (need_b) add_column_sums(r1 - r0, G, gp + r0 * G, db_part[part].data_ptr<float>());
    });
    if (need_w) dw = sum_in_order(dw_part);
    if (need_b) db = sum_in_order(db_part);
  }
  return {dx, dw, db};
}

}  // namespace

// The schemas here, the CPU implementations below; rnnsent/model/fused.py adds the fake (meta) implementations
// and the autograd formula, so that torch.compile and torch.func see an operator like PyTorch's own.
TORCH_LIBRARY(rnnsent_cpu, m) {
  m.def("sequence_forward(int cell, Tensor x, Tensor w_hh, Tensor b_hh, Tensor lengths, Tensor h0, Tensor c0, "
        "bool save, bool full) -> Tensor[]");
  m.def("sequence_backward(int cell, Tensor grad_last, Tensor grad_last_c, Tensor grad_seq, Tensor w_hh, "
        "Tensor lengths, Tensor hs, Tensor act, Tensor extra) -> Tensor[]");
  m.def("projection_backward(Tensor grad, Tensor x, Tensor w, bool need_x, bool need_w, bool need_b) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnnsent_cpu, CPU, m) {
  m.impl("sequence_forward", sequence_forward);
  m.impl("sequence_backward", sequence_backward);
  m.impl("projection_backward", projection_backward);
}
