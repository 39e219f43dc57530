// kdjax: a 2-D matmul for XLA CPU through oneDNN, registered as an XLA FFI custom call.
//
// out[M, N] = op(a) @ op(b), op(x) = x or x^T (attributes trans_a, trans_b), row-major buffers
// in XLA's default layout; bfloat16 or float32 inputs (both the same type), output float32 or
// the input type, accumulation in float32. oneDNN picks the kernel for the CPU it runs on
// (AMX tiles, AVX512-BF16 dot products, AVX2). Primitives are cached per shape.
// Built by kdjax/kernels/cpu_matmul.py (python -m kdjax.kernels.cpu_matmul --build).

#include <dlfcn.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  switch (t) {
    case ffi::DataType::BF16:
      *out = memory::data_type::bf16;
      return true;
    case ffi::DataType::F32:
      *out = memory::data_type::f32;
      return true;
    default:
      return false;
  }
}

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int>;

std::mutex cache_mu;
std::map<Key, dnnl::matmul>& Cache() {
  static auto* cache = new std::map<Key, dnnl::matmul>();
  return *cache;
}

// A matmul primitive created with the weights layout left to oneDNN ("any"): its AVX-512 / AMX
// kernels run 15-160 % faster on their blocked weights layout than on plain row-major weights
// (2-core AMX Xeon, 4096 x 768 x 3072: float32 125 -> 323 GFLOP/s, bfloat16 1,369 -> 1,870).
// The weights are reordered into that layout on every call (< 1 ms for BERT-base shapes) into a
// per-thread buffer, since every call may bring other weights.
struct Prepared {
  dnnl::matmul prim;
  memory::desc user_w;  // the weights as the caller lays them out
  memory::desc prim_w;  // the layout the primitive reads
  bool reorder = false;
  dnnl::reorder to_prim;
};

Prepared Prepare(const memory::desc& src, const memory::desc& w, const memory::desc* bias,
                 const memory::desc& dst, const dnnl::primitive_attr& attr) {
  memory::desc w_any(w.get_dims(), w.get_data_type(), memory::format_tag::any);
  auto pd = bias ? dnnl::matmul::primitive_desc(Engine(), src, w_any, *bias, dst, attr)
                 : dnnl::matmul::primitive_desc(Engine(), src, w_any, dst, attr);
  Prepared p;
  p.prim = dnnl::matmul(pd);
  p.user_w = w;
  p.prim_w = pd.weights_desc();
  p.reorder = p.prim_w != w;
  if (p.reorder) p.to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), w, Engine(), p.prim_w));
  return p;
}

// Every primitive execution holds this lock. oneDNN's library-managed scratchpad is shared by
// all primitives unless oneDNN is built with ONEDNN_ENABLE_CONCURRENT_EXEC (the onednn-cpu-gomp
// wheel is not), and XLA's thunk executor runs independent custom calls concurrently on its
// thread pool: two executes at once corrupted the shared scratchpad (SIGSEGV in the float32
// MiniLMv2 32 x 128 step once the relation KL ran in 12 chunks). Serialising costs nothing
// measurable: each call already spreads over every core through OpenMP.
std::mutex exec_mu;

// MKL, opened at run time from the path cpu_matmul.py finds (the `mkl` wheel's libmkl_rt), so the
// kernel builds and runs without it. Row-major cblas_sgemm with 32-bit ints (the LP64 interface).
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
SgemmFn mkl_sgemm = nullptr;
bool mkl_on = false;
std::string mkl_version;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

bool Fits(int64_t v) { return v >= 0 && v <= INT_MAX; }

// c[m, n] = beta * c + op(a) @ op(b), float32, through MKL (under exec_mu).
void Sgemm(const float* a, bool trans_a, const float* b, bool trans_b, float* c, int64_t m,
           int64_t n, int64_t k, float beta) {
  std::lock_guard<std::mutex> lock(exec_mu);
  mkl_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, int(m), int(n),
            int(k), 1.f, a, int(trans_a ? m : k), b, int(trans_b ? k : n), beta, c, int(n));
}

bool UseMkl(int64_t m, int64_t n, int64_t k) {
  return mkl_on && mkl_sgemm && Fits(m) && Fits(n) && Fits(k) && Fits(m * k) && Fits(k * n) &&
         Fits(m * n);
}

// Runs `p` on the given buffers (args other than the weights in `args`).
void Execute(const Prepared& p, void* weights, std::unordered_map<int, memory> args) {
  std::lock_guard<std::mutex> lock(exec_mu);
  dnnl::stream stream(Engine());
  memory user(p.user_w, Engine(), weights);
  if (p.reorder) {
    thread_local std::vector<char> buffer;
    const size_t size = p.prim_w.get_size();
    if (buffer.size() < size) buffer.resize(size);
    memory blocked(p.prim_w, Engine(), buffer.data());
    p.to_prim.execute(stream, user, blocked);
    args.emplace(DNNL_ARG_WEIGHTS, blocked);
  } else {
    args.emplace(DNNL_ARG_WEIGHTS, user);
  }
  p.prim.execute(stream, args);
  stream.wait();
}

std::map<Key, Prepared>& PreparedCache() {
  static auto* cache = new std::map<Key, Prepared>();
  return *cache;
}

ffi::Error MatmulImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                      bool trans_a, bool trans_b) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  auto od = out->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || od.size() != 2) {
    return ffi::Error::InvalidArgument("kdjax_onednn_matmul: operands must be 2-D");
  }
  const int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  const int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || od[0] != m || od[1] != n) {
    return ffi::Error::InvalidArgument("kdjax_onednn_matmul: shapes do not match");
  }
  memory::data_type in_t, b_t, out_t;
  if (!ToDnnl(a.element_type(), &in_t) || !ToDnnl(b.element_type(), &b_t) ||
      !ToDnnl(out->element_type(), &out_t) || in_t != b_t) {
    return ffi::Error::InvalidArgument(
        "kdjax_onednn_matmul: operands must both be bfloat16 or both float32, "
        "the output bfloat16 or float32");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  // Row-major [rows, cols] has strides {cols, 1}; its transpose is read with {1, rows}.
  memory::desc a_md({m, k}, in_t, trans_a ? memory::dims{1, m} : memory::dims{k, 1});
  memory::desc b_md({k, n}, in_t, trans_b ? memory::dims{1, k} : memory::dims{n, 1});
  memory::desc c_md({m, n}, out_t, memory::dims{n, 1});
  if (k == 0) {  // empty contraction: zeros, as XLA's dot gives
    std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  if (in_t == memory::data_type::f32 && out_t == memory::data_type::f32 && UseMkl(m, n, k)) {
    Sgemm(static_cast<const float*>(a.untyped_data()), trans_a,
          static_cast<const float*>(b.untyped_data()), trans_b,
          static_cast<float*>(out->untyped_data()), m, n, k, 0.f);
    return ffi::Error::Success();
  }
  Prepared prep;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    Key key{m, n, k, trans_a, trans_b, static_cast<int>(in_t), static_cast<int>(out_t)};
    auto it = PreparedCache().find(key);
    if (it == PreparedCache().end()) {
      try {
        it = PreparedCache().emplace(key, Prepare(a_md, b_md, nullptr, c_md, {})).first;
      } catch (const dnnl::error& e) {
        return ffi::Error::Internal(std::string("kdjax_onednn_matmul: oneDNN: ") + e.what());
      }
    }
    prep = it->second;
  }
  try {
    memory am(a_md, Engine(), a.untyped_data());
    memory cm(c_md, Engine(), out->untyped_data());
    Execute(prep, b.untyped_data(), {{DNNL_ARG_SRC, am}, {DNNL_ARG_DST, cm}});
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("kdjax_onednn_matmul: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Batched matmul over strided views: out[batch..., M, N] = a[batch..., M, K] @ b[batch..., K, N],
// each operand's logical dims read through the element strides given (one per logical dim), so
// an einsum such as "bqnd,bknd->bnqk" runs on the buffers as XLA lays them out, without
// transposes. `batch` holds the batch sizes (0 to 3 dims), `mnk` = {M, N, K}.
using BmmKey = std::vector<int64_t>;

std::map<BmmKey, dnnl::matmul>& BmmCache() {
  static auto* cache = new std::map<BmmKey, dnnl::matmul>();
  return *cache;
}

ffi::Error BmmImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Span<const int64_t> batch, ffi::Span<const int64_t> mnk,
                   ffi::Span<const int64_t> a_strides, ffi::Span<const int64_t> b_strides,
                   ffi::Span<const int64_t> c_strides) {
  const size_t nb = batch.size();
  if (nb > 3 || mnk.size() != 3 || a_strides.size() != nb + 2 || b_strides.size() != nb + 2 ||
      c_strides.size() != nb + 2) {
    return ffi::Error::InvalidArgument("kdjax_onednn_bmm: bad dims / strides attributes");
  }
  memory::data_type in_t, b_t, out_t;
  if (!ToDnnl(a.element_type(), &in_t) || !ToDnnl(b.element_type(), &b_t) ||
      !ToDnnl(out->element_type(), &out_t) || in_t != b_t) {
    return ffi::Error::InvalidArgument(
        "kdjax_onednn_bmm: operands must both be bfloat16 or both float32, "
        "the output bfloat16 or float32");
  }
  const int64_t m = mnk[0], n = mnk[1], k = mnk[2];
  int64_t count = m * n;
  for (int64_t d : batch) count *= d;
  // The buffers must hold every element the strides reach (XLA gives dense arrays).
  auto reach = [&](ffi::Span<const int64_t> st, int64_t r, int64_t c) {
    int64_t last = 0;
    for (size_t i = 0; i < nb; ++i) last += (batch[i] - 1) * st[i];
    return last + (r - 1) * st[nb] + (c - 1) * st[nb + 1] + 1;
  };
  if (count == 0) return ffi::Error::Success();
  if (reach(c_strides, m, n) != static_cast<int64_t>(out->element_count())) {
    return ffi::Error::InvalidArgument("kdjax_onednn_bmm: output strides do not cover the output");
  }
  if (k == 0) {
    std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  if (reach(a_strides, m, k) > static_cast<int64_t>(a.element_count()) ||
      reach(b_strides, k, n) > static_cast<int64_t>(b.element_count())) {
    return ffi::Error::InvalidArgument("kdjax_onednn_bmm: strides run past an operand");
  }
  memory::dims bd(batch.begin(), batch.end());
  auto with = [&](int64_t r, int64_t c) {
    memory::dims d = bd;
    d.push_back(r);
    d.push_back(c);
    return d;
  };
  auto strides = [](ffi::Span<const int64_t> st) { return memory::dims(st.begin(), st.end()); };
  memory::desc a_md(with(m, k), in_t, strides(a_strides));
  memory::desc b_md(with(k, n), in_t, strides(b_strides));
  memory::desc c_md(with(m, n), out_t, strides(c_strides));
  BmmKey key(batch.begin(), batch.end());
  key.insert(key.end(), {m, n, k, static_cast<int64_t>(in_t), static_cast<int64_t>(out_t)});
  for (auto st : {a_strides, b_strides, c_strides}) key.insert(key.end(), st.begin(), st.end());
  dnnl::matmul prim;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = BmmCache().find(key);
    if (it == BmmCache().end()) {
      try {
        dnnl::matmul::primitive_desc pd(Engine(), a_md, b_md, c_md);
        it = BmmCache().emplace(key, dnnl::matmul(pd)).first;
      } catch (const dnnl::error& e) {
        return ffi::Error::Internal(std::string("kdjax_onednn_bmm: oneDNN: ") + e.what());
      }
    }
    prim = it->second;
  }
  try {
    std::lock_guard<std::mutex> lock(exec_mu);
    dnnl::stream stream(Engine());
    memory am(a_md, Engine(), a.untyped_data());
    memory bm(b_md, Engine(), b.untyped_data());
    memory cm(c_md, Engine(), out->untyped_data());
    prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("kdjax_onednn_bmm: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// A dense layer: out[M, N] = act(x[M, K] @ w[K, N] + bias[N]) in one oneDNN call (bias and
// activation applied to the float32 accumulator before the store). act: 0 none, 1 GELU (erf),
// 2 GELU (tanh), 3 ReLU.
using DenseKey = std::tuple<int64_t, int64_t, int64_t, int, int, int, int>;

std::map<DenseKey, Prepared>& DenseCache() {
  static auto* cache = new std::map<DenseKey, Prepared>();
  return *cache;
}

ffi::Error DenseImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer bias,
                     ffi::Result<ffi::AnyBuffer> out, int64_t act) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || od.size() != 2 || bias.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("kdjax_onednn_dense: x, w, out 2-D and bias 1-D");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[1];
  if (wd[0] != k || od[0] != m || od[1] != n || bias.dimensions()[0] != n) {
    return ffi::Error::InvalidArgument("kdjax_onednn_dense: shapes do not match");
  }
  memory::data_type in_t, w_t, bias_t, out_t;
  if (!ToDnnl(x.element_type(), &in_t) || !ToDnnl(w.element_type(), &w_t) ||
      !ToDnnl(bias.element_type(), &bias_t) || !ToDnnl(out->element_type(), &out_t) ||
      in_t != w_t) {
    return ffi::Error::InvalidArgument("kdjax_onednn_dense: unsupported dtypes");
  }
  if (act < 0 || act > 3) return ffi::Error::InvalidArgument("kdjax_onednn_dense: bad act");
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    return ffi::Error::InvalidArgument("kdjax_onednn_dense: empty contraction");
  }
  if (in_t == memory::data_type::f32 && bias_t == memory::data_type::f32 &&
      out_t == memory::data_type::f32 && act == 0 && UseMkl(m, n, k)) {
    // the bias broadcast into every row, then out = out + x @ w
    float* o = static_cast<float*>(out->untyped_data());
    const float* bv = static_cast<const float*>(bias.untyped_data());
    for (int64_t i = 0; i < m; ++i) std::memcpy(o + i * n, bv, sizeof(float) * n);
    Sgemm(static_cast<const float*>(x.untyped_data()), false,
          static_cast<const float*>(w.untyped_data()), false, o, m, n, k, 1.f);
    return ffi::Error::Success();
  }
  memory::desc x_md({m, k}, in_t, memory::dims{k, 1});
  memory::desc w_md({k, n}, in_t, memory::dims{n, 1});
  memory::desc b_md({1, n}, bias_t, memory::dims{n, 1});
  memory::desc o_md({m, n}, out_t, memory::dims{n, 1});
  Prepared prep;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    DenseKey key{m, n, k, static_cast<int>(in_t), static_cast<int>(bias_t),
                 static_cast<int>(out_t), static_cast<int>(act)};
    auto it = DenseCache().find(key);
    if (it == DenseCache().end()) {
      try {
        dnnl::primitive_attr attr;
        if (act) {
          dnnl::post_ops ops;
          const dnnl::algorithm alg[] = {dnnl::algorithm::eltwise_gelu_erf,
                                         dnnl::algorithm::eltwise_gelu_tanh,
                                         dnnl::algorithm::eltwise_relu};
          ops.append_eltwise(alg[act - 1], 0.f, 0.f);
          attr.set_post_ops(ops);
        }
        it = DenseCache().emplace(key, Prepare(x_md, w_md, &b_md, o_md, attr)).first;
      } catch (const dnnl::error& e) {
        return ffi::Error::Internal(std::string("kdjax_onednn_dense: oneDNN: ") + e.what());
      }
    }
    prep = it->second;
  }
  try {
    memory xm(x_md, Engine(), x.untyped_data());
    memory bm(b_md, Engine(), bias.untyped_data());
    memory om(o_md, Engine(), out->untyped_data());
    Execute(prep, w.untyped_data(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, om}});
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("kdjax_onednn_dense: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxOnednnDense, DenseImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxOnednnBmm, BmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("batch")
                                  .Attr<ffi::Span<const int64_t>>("mnk")
                                  .Attr<ffi::Span<const int64_t>>("a_strides")
                                  .Attr<ffi::Span<const int64_t>>("b_strides")
                                  .Attr<ffi::Span<const int64_t>>("c_strides"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxOnednnMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

extern "C" const char* kdjax_onednn_version() {
  static std::string v;
  if (v.empty()) {
    const dnnl_version_t* info = dnnl_version();
    v = std::to_string(info->major) + "." + std::to_string(info->minor) + "." +
        std::to_string(info->patch);
  }
  return v.c_str();
}

// Opens MKL's single dynamic library at `path` for the float32 products: the GNU OpenMP threading
// layer (the libgomp oneDNN uses, so the two share one thread pool), the LP64 interface, a fixed
// thread count (no dynamic adjustment: the same partition, so the same sums, on every call).
// Returns 0 on success, 1 if the library does not open, 2 if a symbol is missing, 3 if MKL was
// already running with another threading layer.
extern "C" int kdjax_use_mkl(const char* path) {
  std::lock_guard<std::mutex> lock(exec_mu);
  if (mkl_sgemm) {
    mkl_on = true;
    return 0;
  }
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) return 1;
  auto layer = reinterpret_cast<int (*)(int)>(dlsym(h, "MKL_Set_Threading_Layer"));
  auto iface = reinterpret_cast<int (*)(int)>(dlsym(h, "MKL_Set_Interface_Layer"));
  auto dynamic = reinterpret_cast<void (*)(int)>(dlsym(h, "MKL_Set_Dynamic"));
  auto version = reinterpret_cast<void (*)(char*, int)>(dlsym(h, "MKL_Get_Version_String"));
  auto sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
  if (!layer || !iface || !dynamic || !version || !sgemm) return 2;
  iface(0);  // MKL_INTERFACE_LP64
  // MKL_THREADING_GNU; MKL keeps the layer it started with if something in this process (e.g. an
  // MKL-built NumPy) used it first: two OpenMP runtimes in one process is worse than no MKL.
  if (layer(3) != 3) return 3;
  dynamic(0);
  char buf[256] = {0};
  version(buf, sizeof(buf) - 1);
  mkl_version = buf;
  mkl_sgemm = sgemm;
  mkl_on = true;
  return 0;
}

// Turns the MKL route off (0) or back on (1, if opened); returns whether it is on.
extern "C" int kdjax_set_mkl(int on) {
  std::lock_guard<std::mutex> lock(exec_mu);
  mkl_on = on && mkl_sgemm;
  return mkl_on;
}

extern "C" const char* kdjax_mkl_version() { return mkl_version.c_str(); }
