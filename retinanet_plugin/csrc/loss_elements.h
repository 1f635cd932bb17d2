// The per-element losses and gradients of the focal losses, and the checks of their targets: the
// one source of the math that the CPU kernels (cpu/, on SIMD vectors), the CUDA kernels (cuda/, on
// one value per thread) and the CUDA kernels' host emulation (tests/cuda_emulation/) all compile.
//
// Each element is written once against a math policy M that names the value type (M::V: a scalar,
// or a SIMD vector of scalars) and its operations (exp, log1p, select, ...). ScalarMath<T> below
// serves CUDA and the emulation; cpu/focal_loss_cpu_impl.h defines the Vectorized policy. The
// derivations are in sigmoid_focal_loss.h (sigmoid focal loss), quality_focal_loss.h (quality focal
// loss) and sigmoid_focal_loss_dense.h (float targets).
//
// Every formula uses one exp and one log1p per element, of -|x|, so no term overflows for any
// finite logit.
#pragma once

#include <math.h>

#include <cstdint>
#include <type_traits>

// RP_HOST_DEVICE for member functions, RP_HOST_DEVICE_FN for free functions. On the host the free functions have
// internal linkage: each CPU instruction-set translation unit keeps its own copy, compiled for its instruction set.
#if defined(__CUDACC__) || defined(RP_CUDA_EMULATION)
#define RP_HOST_DEVICE __host__ __device__ __forceinline__
#define RP_HOST_DEVICE_FN static __host__ __device__ __forceinline__
#else
#define RP_HOST_DEVICE inline
#define RP_HOST_DEVICE_FN static inline
#endif

namespace retinanet_plugin {

// ------------------------------------------------------------------------------------------- target checks

// A label of a row of K logits: 0..K-1 its class (positive column), K background, -1 ignored.
RP_HOST_DEVICE_FN bool label_is_valid(int64_t label, int64_t num_classes) {
  return label >= -1 && label <= num_classes;
}

RP_HOST_DEVICE_FN bool label_is_class(int64_t label, int64_t num_classes) {
  return label >= 0 && label < num_classes;
}

// A soft target (quality focal loss quality, dense focal loss target): in [0, 1]; NaN fails.
template <typename T>
RP_HOST_DEVICE_FN bool target_is_valid(T target) {
  return target >= T(0) && target <= T(1);
}

// --------------------------------------------------------------------------------------- scalar math policy

// The C math functions, which CUDA provides on the device (fast approximations under --use_fast_math).
RP_HOST_DEVICE_FN float scalar_exp(float v) { return ::expf(v); }
RP_HOST_DEVICE_FN double scalar_exp(double v) { return ::exp(v); }
RP_HOST_DEVICE_FN float scalar_log1p(float v) { return ::log1pf(v); }
RP_HOST_DEVICE_FN double scalar_log1p(double v) { return ::log1p(v); }
RP_HOST_DEVICE_FN float scalar_pow(float b, float e) { return ::powf(b, e); }
RP_HOST_DEVICE_FN double scalar_pow(double b, double e) { return ::pow(b, e); }

template <typename T>
struct ScalarMath {
  using V = T;
  using Mask = bool;
  static RP_HOST_DEVICE V splat(T v) { return v; }
  static RP_HOST_DEVICE V abs(V v) { return v < T(0) ? -v : v; }
  static RP_HOST_DEVICE V neg(V v) { return -v; }
  static RP_HOST_DEVICE V max(V a, V b) { return a > b ? a : b; }
  static RP_HOST_DEVICE V exp(V v) { return scalar_exp(v); }
  static RP_HOST_DEVICE V log1p(V v) { return scalar_log1p(v); }
  static RP_HOST_DEVICE V reciprocal(V v) { return T(1) / v; }
  static RP_HOST_DEVICE V fmadd(V a, V b, V c) { return a * b + c; }
  // base >= 0. 0^0 = 1 and 0^e = 0 are set explicitly rather than left to powf under --use_fast_math.
  static RP_HOST_DEVICE V pow(V base, V e) { return base == T(0) ? (e == T(0) ? T(1) : T(0)) : scalar_pow(base, e); }
  static RP_HOST_DEVICE Mask ge(V a, V b) { return a >= b; }
  static RP_HOST_DEVICE Mask gt(V a, V b) { return a > b; }
  static RP_HOST_DEVICE Mask eq(V a, V b) { return a == b; }
  static RP_HOST_DEVICE V select(Mask m, V if_true, V if_false) { return m ? if_true : if_false; }
  static RP_HOST_DEVICE bool any(Mask m) { return m; }
};

// ------------------------------------------------------------------------------------------------ elements
//
// An element's exponent 2 (the common case) is a template flag (kGammaTwo, kBetaTwo) so that its power is one
// multiplication; the kernels' host side picks the instantiation with with_flag.
//
// Label elements: terms<kLoss, kGrad>(x, has_positive, positive, quality, loss, dloss_dx) sets the loss and/or
// dloss/dx of the logits x of one non-ignored row; `positive` is true in the lane of the row's class (its target is
// `quality`), and `has_positive` whether any lane is (a scalar policy passes the same flag twice).

// The stable pieces of sigmoid(x) for one exp and one log1p: with e = exp(-|x|) and r = 1 / (1 + e),
// sigmoid(x) = r and 1 - sigmoid(x) = e r for x >= 0, the other way round otherwise.
template <class M>
struct Sigmoid {
  using V = typename M::V;
  V l;            // log1p(exp(-|x|))
  V p;            // sigmoid(x)
  V one_minus_p;  // 1 - sigmoid(x)
  RP_HOST_DEVICE explicit Sigmoid(const V& x) {
    const V e = M::exp(M::neg(M::abs(x)));  // in (0, 1]
    l = M::log1p(e);
    const V r = M::reciprocal(M::splat(1) + e);
    const V er = e * r;
    const typename M::Mask nonneg = M::ge(x, M::splat(0));
    p = M::select(nonneg, r, er);
    one_minus_p = M::select(nonneg, er, r);
  }
  RP_HOST_DEVICE V softplus(const V& x) const { return M::max(x, M::splat(0)) + l; }           // -log(1 - p)
  RP_HOST_DEVICE V softplus_minus(const V& x) const { return M::max(M::neg(x), M::splat(0)) + l; }  // -log(p)
};

// Sigmoid focal loss (sigmoid_focal_loss.h), in the signed logit z = -x in the positive lane, x
// elsewhere:
// loss = w q^g softplus(z), dloss/dz = w q^g (q + g (1 - q) softplus(z)), q = sigmoid(z).
template <class M, bool kGammaTwo>
struct SigmoidFocalElement {
  using V = typename M::V;
  using Mask = typename M::Mask;
  static constexpr bool kReadsQuality = false;
  V gamma, weight_positive, weight_negative;

  template <typename Real>
  RP_HOST_DEVICE SigmoidFocalElement(Real gamma_, Real weight_positive_, Real weight_negative_)
      : gamma(M::splat(gamma_)), weight_positive(M::splat(weight_positive_)), weight_negative(M::splat(weight_negative_)) {}

  template <bool kLoss, bool kGrad, typename Quality>
  RP_HOST_DEVICE void terms(
      const V& x, bool has_positive, const Mask& positive, Quality /*quality*/, V& loss, V& dloss_dx) const {
    V z = x;
    V w = weight_negative;
    if (has_positive) {  // at most once per row on SIMD vectors
      z = M::select(positive, M::neg(x), x);
      w = M::select(positive, weight_positive, weight_negative);
    }
    const Sigmoid<M> s(z);  // s.p = q
    const V softplus_z = s.softplus(z);
    V modulating;  // q^gamma
    if constexpr (kGammaTwo) {
      modulating = s.p * s.p;
    } else {
      modulating = M::exp(M::neg(gamma * s.softplus_minus(z)));  // exp(-gamma * softplus(-z))
    }
    const V weighted = w * modulating;
    if constexpr (kLoss) {
      loss = weighted * softplus_z;
    }
    if constexpr (kGrad) {
      const V dloss_dz = weighted * M::fmadd(gamma * s.one_minus_p, softplus_z, s.p);
      dloss_dx = has_positive ? M::select(positive, M::neg(dloss_dz), dloss_dz) : dloss_dz;
    }
  }
};

// Quality focal loss (quality_focal_loss.h), target y = quality in the positive lane, 0 elsewhere:
// loss = |d|^b BCE(x, y), dloss/dx = |d|^b d + b (|d|^b / d) s (1 - s) BCE, d = s - y, s = sigmoid(x).
template <class M, bool kBetaTwo>
struct QualityFocalElement {
  using V = typename M::V;
  using Mask = typename M::Mask;
  static constexpr bool kReadsQuality = true;
  V beta;
  bool beta_is_zero;  // plain BCE: dloss/dx = d (the b |d|^b / d term is 0, but |d|^0 / d may overflow)

  template <typename Real>
  RP_HOST_DEVICE explicit QualityFocalElement(Real beta_) : beta(M::splat(beta_)), beta_is_zero(beta_ == Real(0)) {}

  template <bool kLoss, bool kGrad, typename Quality>
  RP_HOST_DEVICE void terms(
      const V& x, bool has_positive, const Mask& positive, Quality quality, V& loss, V& dloss_dx) const {
    const V zero = M::splat(0);
    const V y = has_positive ? M::select(positive, M::splat(quality), zero) : zero;
    const Sigmoid<M> s(x);
    const V one_minus_y = M::splat(1) - y;
    // s - y, keeping its precision where s is near 1
    const V d = M::select(M::ge(x, zero), one_minus_y - s.one_minus_p, s.p - y);
    const V bce = M::fmadd(y, s.softplus_minus(x), one_minus_y * s.softplus(x));
    V modulating;  // |d|^beta
    if constexpr (kBetaTwo) {
      modulating = d * d;
    } else {
      modulating = M::pow(M::abs(d), beta);
    }
    if constexpr (kLoss) {
      loss = modulating * bce;
    }
    if constexpr (kGrad) {
      const V curvature_bce = s.p * s.one_minus_p * bce;  // s (1 - s) BCE
      if constexpr (kBetaTwo) {
        dloss_dx = d * M::fmadd(beta, curvature_bce, modulating);  // d (d^2 + 2 s (1 - s) BCE)
      } else if (beta_is_zero) {
        dloss_dx = d;
      } else {
        const V ratio = M::select(M::eq(d, zero), zero, modulating / d);  // |d|^beta / d, 0 at d = 0
        dloss_dx = M::fmadd(modulating, d, beta * ratio * curvature_bce);
      }
    }
  }
};

// Sigmoid focal loss of float targets t in [0, 1] (sigmoid_focal_loss_dense.h), as fvcore and torchvision define it:
// loss = w m^g BCE(x, t), m = 1 - p_t = t (1 - p) + (1 - t) p, w = a_pos t + a_neg (1 - t);
// dloss/dx = w m^g ((p - t) + g (p (1 - p) / m) (1 - 2 t) BCE). t in {0, 1} gives SigmoidFocalElement's values.
template <class M, bool kGammaTwo>
struct DenseFocalElement {
  using V = typename M::V;
  V gamma, weight_positive, weight_negative;

  template <typename Real>
  RP_HOST_DEVICE DenseFocalElement(Real gamma_, Real weight_positive_, Real weight_negative_)
      : gamma(M::splat(gamma_)), weight_positive(M::splat(weight_positive_)), weight_negative(M::splat(weight_negative_)) {}

  template <bool kLoss, bool kGrad>
  RP_HOST_DEVICE void terms(const V& x, const V& t, V& loss, V& dloss_dx) const {
    const V zero = M::splat(0);
    const V one_minus_t = M::splat(1) - t;
    const Sigmoid<M> s(x);
    const V bce = M::fmadd(t, s.softplus_minus(x), one_minus_t * s.softplus(x));
    const V m = M::fmadd(t, s.one_minus_p, one_minus_t * s.p);  // 1 - p_t, no cancellation
    V modulating;                                               // m^gamma
    if constexpr (kGammaTwo) {
      modulating = m * m;
    } else {
      modulating = M::pow(m, gamma);
    }
    const V weighted = M::fmadd(weight_positive, t, weight_negative * one_minus_t) * modulating;
    if constexpr (kLoss) {
      loss = weighted * bce;
    }
    if constexpr (kGrad) {
      const V p_minus_t = one_minus_t * s.p - t * s.one_minus_p;  // precise where p is near t in {0, 1}
      // p (1 - p) / m <= 1 for t in [0, 1]; where m = 0 the term is multiplied by m^gamma = 0 (gamma > 0)
      const V ratio = M::select(M::gt(m, zero), s.p * s.one_minus_p / m, zero);
      const V focusing = gamma * ratio * (M::splat(1) - t - t) * bce;
      dloss_dx = weighted * (p_minus_t + focusing);
    }
  }
};

// Calls fn(std::true_type{}) where `flag` holds, else fn(std::false_type{}): a run-time flag made a template argument,
// which fn reads as decltype(its argument)::value. Host code only (the kernels' dispatch); internal linkage like the
// other free functions here.
template <typename Fn>
static inline void with_flag(bool flag, Fn&& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

}  // namespace retinanet_plugin
