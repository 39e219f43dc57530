// kdjax: a 2-D matmul for XLA CPU through oneDNN, registered as an XLA FFI custom call.
//
// out[M, N] = op(a) @ op(b), op(x) = x or x^T (attributes trans_a, trans_b), row-major buffers
// in XLA's default layout; bfloat16 or float32 inputs (both the same type), output float32 or
// the input type, accumulation in float32. oneDNN picks the kernel for the CPU it runs on
// (AMX tiles, AVX512-BF16 dot products, AVX2). Primitives are cached per shape.
// Built by kdjax/kernels/cpu_matmul.py (python -m kdjax.kernels.cpu_matmul --build).

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

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
  dnnl::matmul prim;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    Key key{m, n, k, trans_a, trans_b, static_cast<int>(in_t), static_cast<int>(out_t)};
    auto it = Cache().find(key);
    if (it == Cache().end()) {
      try {
        dnnl::matmul::primitive_desc pd(Engine(), a_md, b_md, c_md);
        it = Cache().emplace(key, dnnl::matmul(pd)).first;
      } catch (const dnnl::error& e) {
        return ffi::Error::Internal(std::string("kdjax_onednn_matmul: oneDNN: ") + e.what());
      }
    }
    prim = it->second;
  }
  try {
    dnnl::stream stream(Engine());
    memory am(a_md, Engine(), a.untyped_data());
    memory bm(b_md, Engine(), b.untyped_data());
    memory cm(c_md, Engine(), out->untyped_data());
    prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("kdjax_onednn_matmul: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

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
