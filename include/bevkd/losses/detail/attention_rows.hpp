// bevkd internal: team-collective rows of the attention-map distillation (pooled teacher, masked keys, four divergences).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <type_traits>

#include "../../core/config.hpp"
#include "../../core/detail/lanes.hpp"
#include "../../core/detail/row_driver.hpp"
#include "../../core/dtype.hpp"
#include "../../core/math.hpp"
#include "../../core/team.hpp"
#include "../../core/view.hpp"
#include "kl_rows.hpp"

namespace bevkd {

/// @brief What an attention tensor holds.
enum class attention_input {
  logits,        ///< Pre-softmax attention logits (preferred: exact log-probabilities, temperature allowed).
  probabilities  ///< Post-softmax attention weights (temperature must be 1).
};

/// @brief Over which keys one attention distribution is normalised.
enum class attention_normalize {
  per_source,  ///< Softmax over the K keys of each (query, head, source): BEVFormer's own normalisation.
  joint        ///< Softmax over all S x K keys of each (query, head): how a query splits attention across sources.
};

/// @brief Divergence between the teacher's distribution p and the student's q.
enum class divergence {
  kl,          ///< KL(p || q) = sum p log(p / q).
  reverse_kl,  ///< KL(q || p) = sum q log(q / p).
  js,          ///< Jensen-Shannon: (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2.
  mse          ///< Mean over the row's valid keys of (q - p)^2.
};

namespace detail {

/// @brief Largest teacher head group (H_T / H_S) pooled on the fly.
constexpr int max_head_group = 8;

/// @brief Row weights of the attention loss: per-query weights times the source mask.
///
/// Rows are (n, h, s) in per_source mode and (n, h) in joint mode. A masked source drops its
/// row (per_source) or its keys (joint); a joint row with every source masked is dropped.
template <class Acc>
struct attention_weighting {
  strided_view<const std::uint8_t, 2> mask;   ///< m[n, s] != 0: source s is valid for query n (absent: all valid).
  strided_view<const Acc, 1> query_weights;   ///< w[n] >= 0 (absent: 1).
  strided_view<const Acc, 3> upstream;        ///< reduction::none: u[n, h, s] ([N, H, 1] joint), or absent.
  strided_view<Acc, 3> row_loss;              ///< reduction::none: loss_weight w_r l_r ([N, H, 1] joint), or absent.
  index_t heads = 1;                          ///< H (student heads).
  index_t sources = 1;                        ///< S.
  bool joint = false;                         ///< Joint normalisation.

  /// @brief (n, h, s) of row r (s = 0 in joint mode): two divisions, one in joint mode (64-bit divisions are slow on
  /// some hosts and emulated on the device).
  BEVKD_HOST_DEVICE void decode(index_t r, index_t& n, index_t& h, index_t& s) const {
    const index_t per_query = joint ? heads : heads * sources;
    n = r / per_query;
    const index_t within = r - n * per_query;  // h S + s
    h = joint ? within : within / sources;
    s = joint ? 0 : within - h * sources;
  }
  /// @brief True when the mask or the query weights make row weights differ from 1.
  BEVKD_HOST_DEVICE bool has_weights() const { return mask.data != nullptr || query_weights.data != nullptr; }
  /// @brief True when source s of query n is valid.
  BEVKD_HOST_DEVICE bool valid(index_t n, index_t s) const { return !mask.data || mask(n, s) != 0; }
  /// @brief Weight of row r: w[n], or 0 when its source (per_source) or all its sources (joint) are masked.
  BEVKD_HOST_DEVICE Acc weight(index_t r) const {
    if (!has_weights()) return Acc(1);  // before the decode: its divisions cost more than a short row
    index_t n, h, s;
    decode(r, n, h, s);
    return weight_at(n, s);
  }
  /// @brief weight() of the row of query n and source s (any source in joint mode).
  BEVKD_HOST_DEVICE Acc weight_at(index_t n, index_t s) const {
    bool any = !joint ? valid(n, s) : false;
    for (index_t t = 0; joint && t < sources && !any; ++t) any = valid(n, t);
    if (!any) return Acc(0);
    return query_weights.data ? query_weights(n) : Acc(1);
  }
  /// @brief Upstream gradient of row r (1 without one).
  BEVKD_HOST_DEVICE Acc upstream_grad(index_t r) const {
    if (!upstream.data) return Acc(1);
    index_t n, h, s;
    decode(r, n, h, s);
    return upstream(n, h, s);
  }
  /// @brief Writes row r's output loss when per-row outputs were requested.
  BEVKD_HOST_DEVICE void store(index_t r, Acc value) const {
    if (!row_loss.data) return;
    index_t n, h, s;
    decode(r, n, h, s);
    row_loss(n, h, s) = value;
  }
  /// @brief weight() and upstream_grad() of rows [first, first + count) into w and u (a host row block's; one
  /// decode for all of them).
  ///
  /// A joint row's weight is its query's: taken once per query (weight_at scans the query's S sources; per row, that
  /// scan took about 4 % of a masked S = 6 call, measured, perf, Intel Cascade Lake).
  void load(index_t first, int count, Acc* w, Acc* u) const {
    if (!has_weights() && !upstream.data) return unit_row_weights(count, w, u);
    index_t n, h, s;
    decode(first, n, h, s);
    Acc row_weight = Acc(1);
    index_t weighed = -1;  // the query whose weight row_weight holds (joint rows)
    for (int l = 0; l < count; ++l, advance(n, h, s)) {
      if (has_weights() && (!joint || n != weighed)) {
        row_weight = weight_at(n, s);
        weighed = n;
      }
      w[l] = row_weight;
      u[l] = upstream.data ? upstream(n, h, s) : Acc(1);
    }
  }
  /// @brief store() of rows [first, first + count) from values.
  void store(index_t first, int count, const Acc* values) const {
    if (!row_loss.data) return;
    index_t n, h, s;
    decode(first, n, h, s);
    for (int l = 0; l < count; ++l, advance(n, h, s)) row_loss(n, h, s) = values[l];
  }
  /// @brief Moves (n, h, s) on to the next row (the decode of r + 1 from that of r, without divisions).
  BEVKD_HOST_DEVICE void advance(index_t& n, index_t& h, index_t& s) const {
    if (!joint && ++s < sources) return;
    s = 0;
    if (++h < heads) return;
    h = 0;
    ++n;
  }
};

/// @brief One divergence term of a key and the derivative of the divergence w.r.t. the student probability q.
template <class Acc>
struct divergence_term {
  Acc term;  ///< Contribution of this key to D(p, q).
  Acc dq;    ///< dD/dq of this key.
};

/// @brief D's term and dD/dq for one key; zero-probability sides contribute 0 (x log x at 0 is 0).
template <class Acc>
BEVKD_FORCEINLINE divergence_term<Acc> divergence_at(divergence d, Acc p, Acc q, Acc log_q, Acc inv_valid) {
  switch (d) {
    case divergence::kl:
      return {p > Acc(0) ? p * (math::log(p) - log_q) : Acc(0), p > Acc(0) ? -p / q : Acc(0)};
    case divergence::reverse_kl: {
      const Acc log_p = math::log(p);
      return {q > Acc(0) ? q * (log_q - log_p) : Acc(0), log_q - log_p + Acc(1)};
    }
    case divergence::js: {
      const Acc log_p = math::log(p);
      const Acc m = Acc(0.5) * (p + q), log_m = math::log(m);
      const Acc term = Acc(0.5) * ((p > Acc(0) ? p * (log_p - log_m) : Acc(0)) + (q > Acc(0) ? q * (log_q - log_m) : Acc(0)));
      return {term, q > Acc(0) ? Acc(0.5) * (log_q - log_m) : Acc(0)};
    }
    default: {
      const Acc diff = q - p;
      return {diff * diff * inv_valid, Acc(2) * diff * inv_valid};
    }
  }
}

/// @brief True when every row of a call can run as softmax KL over contiguous key runs: KL of two logit tensors,
/// nothing pooled, unit key strides (decided once per call on the host; see attention_problem's Runs).
template <class View, class GradView>
bool attention_softmax_runs(divergence div, bool student_logits, bool teacher_logits, int group, index_t level_group,
                            const View& student, const View& teacher, const GradView& grad) {
  return div == divergence::kl && student_logits && teacher_logits && group == 1 && level_group == 1 &&
         student.stride[3] == 1 && teacher.stride[3] == 1 && grad.stride[3] == 1;
}

/// @brief Attention distillation over rows of [N, H, S, K] student/teacher tensors (teacher heads and levels pooled).
///
/// Runs: every row is a softmax KL over contiguous key runs (attention_softmax_runs), run by the
/// response KL's kernel. A separate instantiation, so that the device kernel of the common case
/// (BEVFormer's logits, nothing pooled) carries neither the general path's registers nor its stack,
/// and reads 16-byte vectors where the rows are aligned.
template <class T, bool Runs = false>
struct attention_problem {
  using value_type = T;                      ///< Element type.
  using acc_type = accum_t<T>;               ///< Accumulation type.
  using stats = acc_array<acc_type, 2 + max_head_group>;  ///< Student value, valid count, one per teacher head.
  static constexpr bool unit_stride = true;  ///< Keys lie along the fastest dimension: warps read rows coalesced.
  strided_view<const T, 4> student;          ///< [N, H, S, K].
  strided_view<const T, 4> teacher;          ///< [N, H * group, S, K * level_group].
  strided_view<T, 4> grad;                   ///< Student's extents.
  attention_weighting<acc_type> rows;        ///< Weights, mask, per-row outputs.
  int group = 1;                             ///< Teacher heads averaged into one student head.
  index_t level_group = 1;                   ///< Teacher levels summed into one student level.
  index_t points = 0;                        ///< Points per level (0: keys are not pooled).
  bool student_logits = true;                ///< Student input is logits.
  bool teacher_logits = true;                ///< Teacher input is logits.
  divergence div = divergence::kl;           ///< Divergence.
  acc_type tau = 1;                          ///< Temperature.
  acc_type inv_tau = 1;                      ///< 1 / tau.
  bool one_run = false;  ///< A joint row's S x K keys are one contiguous, unmasked run in all three tensors.
  /// @brief Rows are softmaxes, bound by their exponentials (see grad_streamable).
  static constexpr bool exponential_rows = true;
  /// @brief The host row block: masked joint rows are multi_run_blocks, each block's runs found once.
  using host_block = multi_run_host_block<T>;

  /// @brief Number of rows.
  BEVKD_HOST_DEVICE index_t row_count() const { return student.extent[0] * rows.heads * (rows.joint ? 1 : rows.sources); }
  /// @brief Keys per row.
  BEVKD_HOST_DEVICE index_t columns() const { return rows.joint ? rows.sources * keys() : keys(); }
  /// @brief Keys one pass of the row kernel runs over: a masked joint softmax-run row is a run per valid source.
  index_t run_columns() const { return Runs && rows.joint && !one_run ? keys() : columns(); }
  /// @brief Student keys K.
  BEVKD_HOST_DEVICE index_t keys() const { return student.extent[3]; }
  /// @brief True when softmax-run rows (each source's keys) start on 16-byte boundaries in student and teacher: the
  /// device then reads 16-byte vectors. The general path reads key by key.
  bool vector_aligned() const {
    return Runs && rows_vector_aligned(student.data, student.stride) &&
           rows_vector_aligned(teacher.data, teacher.stride);
  }
  /// @brief Host scratch: softmax-run rows keep two exponentials per key, like the response KL.
  index_t scratch_bytes() const { return Runs ? 2 * columns() * static_cast<index_t>(sizeof(acc_type)) : 0; }

  /// @brief Rows with float accumulators can run in host row blocks (see blocks_apply()).
  static constexpr bool row_blocks = std::is_same<acc_type, float>::value;
  /// @brief True when this call's rows run in host row blocks: softmax KL over key runs, rows of at most
  /// max_row_layout_columns keys (a masked joint row: a run per valid source, at most max_block_runs sources).
  bool blocks_apply() const {
    const bool masked_joint = rows.joint && !one_run;
    return row_blocks && Runs && block_columns_fit(columns(), true) && (!masked_joint || rows.sources <= max_block_runs);
  }
  /// @brief Host scratch of one row block.
  index_t block_scratch_bytes() const { return softmax_kl_block_scratch_bytes<acc_type>(columns()); }
  /// @brief The key runs of rows [first, first + count) as loss rows (host row blocks).
  ///
  /// Each row's runs are the row before's stepped to the next source or head (key_run's offsets,
  /// three multiplies per tensor, took about a sixth of the TSA's driver work); a new query is
  /// computed anew.
  void row_range(index_t first, int count, loss_row<T, true>* out) const {
    if (rows.joint && !one_run) return;  // masked joint rows: see source_runs_of
    index_t n, h, s;
    rows.decode(first, n, h, s);
    loss_row<T, true> row = key_run(n, h, s, columns());
    const index_t back = rows.joint ? 0 : rows.sources - 1;  // sources to step back over to the next head
    for (int l = 0; l < count; ++l) {
      out[l] = row;
      if (!rows.joint && s + 1 < rows.sources) {
        ++s;
        step_runs(row, 0, 1);
      } else if (h + 1 < rows.heads) {
        s = 0;
        ++h;
        step_runs(row, 1, -back);
      } else {
        rows.advance(n, h, s);
        row = key_run(n, h, s, columns());
      }
    }
  }
  /// @brief When every row lies one distance from the row before in each tensor (the row dimensions, [N, H, S] or a
  /// joint row's [N, H], collapse into one, as in a contiguous [N, H, S, K] tensor): row `first` into row0, the
  /// distances into step (student, teacher, gradient) and true; else false (row_range then lists the rows).
  ///
  /// Why: row_range's decode of the block's first row takes three 64-bit divisions, which on an
  /// Intel Cascade Lake host cost about a fifth of the TSA call's driver work (measured, perf).
  bool even_spacing(index_t first, int count, loss_row<T, true>& row0, index_t (&step)[3]) const {
    (void)count;
    if (!Runs || (rows.joint && !one_run)) return false;
    const index_t distances[3] = {row_distance(student), row_distance(teacher), row_distance(grad)};
    for (int i = 0; i < 3; ++i) {
      if (distances[i] < 0) return false;
      step[i] = distances[i];
    }
    row0 = loss_row<T, true>{
        {student.data + first * step[0], 1}, {teacher.data + first * step[1], 1}, {grad.data + first * step[2], 1},
        columns()};
    return true;
  }
  /// @brief Loss of each row of a host row block; writes coeff[l] * dl/d(student) (see softmax_kl_block). Masked
  /// joint rows run as multi_run_blocks of their valid sources; their masked sources' keys get gradient 0.
  template <class Block>
  void block_loss_and_grad(Block& block, const acc_type* coeff, const bool* skip, bool accumulate, acc_type* scratch,
                           acc_type* loss) const {
    if (!rows.joint || one_run) {
      softmax_kl_block(block, coeff, skip, accumulate, scratch, inv_tau, tau, loss);
      return;
    }
    const multi_run_block<T> runs = block.runs(columns(), keys(), [this](index_t first, int count, block_runs<T>& out) {
      source_runs_of(first, count, out);
    });
    softmax_kl_row_layout(runs, scratch, coeff, skip, accumulate, inv_tau, tau, loss);
    for (int l = 0; l < block.count; ++l) {
      if (skip[l] && accumulate) continue;  // an excluded row's gradient is left as it was
      for (int i = 0; i < runs.rows->masked_count[l]; ++i) {
        if (runs.stream_grad)  // set only when writing, not accumulating
          write_zeros(runs.rows->masked[l][i], keys(), true);
        else
          zero_keys(host_team(), runs.rows->masked[l][i], accumulate);
      }
    }
  }

  /// @brief True when a joint row's S x K keys form one contiguous run in all three tensors and nothing is masked.
  bool one_run_rows() const {
    const auto adjacent = [](const auto& v) { return v.stride[2] == v.extent[3]; };
    return rows.joint && !rows.mask.data && adjacent(student) && adjacent(teacher) && adjacent(grad);
  }

  /// @brief Writes zeros over row r's gradient.
  template <class Team>
  BEVKD_HOST_DEVICE void zero_grad(const Team& team, index_t r) const {
    index_t n, h, s;
    rows.decode(r, n, h, s);
    team.for_columns(columns(), [&](index_t c) { grad_at(n, h, s, c) = store_from_accum<T>(acc_type(0)); });
  }

  /// @brief Team-collective tau^2 D(p_T, q_S) of row r; writes coeff * dl_r / d(student).
  template <class Team>
  BEVKD_HOST_DEVICE acc_type loss_and_grad(const Team& team, index_t r, acc_type coeff, bool accumulate) const {
    index_t n, h, s;
    rows.decode(r, n, h, s);
    if constexpr (Runs) {
      return softmax_kl_over_runs(team, n, h, s, coeff, accumulate);
    } else {
      return general_loss_and_grad(team, n, h, s, coeff, accumulate);
    }
  }

 private:
  // Any divergence, pooling and input kind: two reductions over the row, then the gradient.
  template <class Team>
  BEVKD_HOST_DEVICE acc_type general_loss_and_grad(const Team& team, index_t n, index_t h, index_t s, acc_type coeff,
                                                   bool accumulate) const {
    using acc = acc_type;
    const stats maxima = student_logits || teacher_logits ? row_maxima(team, n, h, s) : stats{};
    const stats sums = row_sums(team, n, h, s, maxima);
    const acc log_zs = student_logits ? math::log(sums[0]) : acc(0);
    const acc inv_valid = acc(1) / sums[1];
    const auto key = [&](index_t c, acc& p, acc& q, acc& log_q) {
      p = teacher_prob(n, h, s, c, maxima, sums);
      const acc z = student_value(n, h, s, c);
      log_q = student_logits ? softmax_exponent(z, maxima[0], inv_tau) - log_zs : math::log(z);
      q = student_logits ? math::exp_nonpositive(log_q) : z;
    };
    using pair = acc_array<acc, 2>;
    const pair totals = team.reduce_columns(sum_op{}, pair{{acc(0), acc(0)}}, columns(), [&](index_t c) {
      if (!valid_column(n, s, c)) return pair{{acc(0), acc(0)}};
      acc p, q, log_q;
      key(c, p, q, log_q);
      const divergence_term<acc> d = divergence_at(div, p, q, log_q, inv_valid);
      // sum_k q_k g_k, for the softmax Jacobian; for KL it is -sum_k p_k, kept exact where q underflows.
      return pair{{d.term, div == divergence::kl ? -p : (q == acc(0) ? acc(0) : q * d.dq)}};
    });
    const acc scale = coeff * (student_logits ? tau : acc(1));
    team.for_columns(columns(), [&](index_t c) {
      acc g = acc(0);
      if (valid_column(n, s, c)) {
        acc p, q, log_q;
        key(c, p, q, log_q);
        const acc dq = divergence_at(div, p, q, log_q, inv_valid).dq;
        // Through the softmax: dD/dz_c = q_c (g_c - sum_k q_k g_k); for KL, q_c sum_k p_k - p_c
        // (q_c - p_c when the teacher's valid keys carry all its mass).
        g = !student_logits ? dq
            : div == divergence::kl ? q * -totals[1] - p
                                    : (q == acc(0) ? acc(0) : q * (dq - totals[1]));
      }
      write_grad(grad_at(n, h, s, c), scale * g, accumulate);
    });
    return tau * tau * totals[0];
  }

  // Moves a row's three runs by `heads` heads and `sources` sources.
  void step_runs(loss_row<T, true>& row, index_t heads, index_t sources) const {
    row.student.ptr += heads * student.stride[1] + sources * student.stride[2];
    row.teacher.ptr += heads * teacher.stride[1] + sources * teacher.stride[2];
    row.grad.ptr += heads * grad.stride[1] + sources * grad.stride[2];
  }

  // The distance from each row of v to the next when v's row dimensions ([N, H, S] per source, [N, H] joint) collapse
  // into one (each dimension of extent > 1 steps over all the ones inside it); -1 when they do not.
  template <class View>
  index_t row_distance(const View& v) const {
    const int row_dims = rows.joint ? 2 : 3;
    index_t distance = 0, span = 0;  // span: rows inside the dimensions seen (0: none of extent > 1 yet, one row)
    for (int d = row_dims - 1; d >= 0; --d) {
      if (v.extent[d] == 1) continue;
      if (span == 0)
        distance = v.stride[d];
      else if (v.stride[d] != span * distance)
        return -1;
      span = (span == 0 ? 1 : span) * v.extent[d];
    }
    return distance;
  }

  // The contiguous keys [0, count) of (n, h) starting at source s, as one loss row.
  BEVKD_HOST_DEVICE loss_row<T, true> key_run(index_t n, index_t h, index_t s, index_t count) const {
    return loss_row<T, true>{{&student(n, h, s, 0), 1}, {&teacher(n, h, s, 0), 1}, {&grad(n, h, s, 0), 1}, count};
  }

  // The K keys of each valid source of a joint row (n, h), as runs.
  struct source_runs {
    const attention_problem* problem;
    index_t n, h;

    BEVKD_HOST_DEVICE index_t columns() const { return problem->columns(); }  // an upper bound: sizes the scratch
    template <class F>
    BEVKD_HOST_DEVICE void for_each(F&& f) const {
      for (index_t t = 0; t < problem->rows.sources; ++t)
        if (problem->rows.valid(n, t)) f(problem->key_run(n, h, t, problem->keys()));
    }
  };

  // KL of a row through the response KL's softmax kernel: one run (a per_source row, or a joint
  // row stored as one), or a run per valid source, whose masked sources' keys get gradient 0.
  template <class Team>
  BEVKD_HOST_DEVICE acc_type softmax_kl_over_runs(const Team& team, index_t n, index_t h, index_t s, acc_type coeff,
                                                  bool accumulate) const {
    if (!rows.joint || one_run) return softmax_kl_row(team, key_run(n, h, s, columns()), inv_tau, tau, coeff, accumulate);
    const acc_type loss = softmax_kl_segments(team, source_runs{this, n, h}, inv_tau, tau, coeff, accumulate);
    zero_masked_sources(team, n, h, accumulate);
    return loss;
  }
  // The valid sources' key runs of the joint rows [first, first + count) and the gradient runs of their masked
  // sources, into `out` (rows from count to block_rows get none): a host multi_run_block's rows. A query's next head
  // has the same valid sources, so its runs are the row before's stepped one head (key_run's offsets per source took
  // about a quarter of the masked S = 6 call's samples in a -O2 build, measured).
  void source_runs_of(index_t first, int count, block_runs<T>& out) const {
    for (int l = count; l < block_rows; ++l) out.run_count[l] = out.masked_count[l] = 0;
    if (count == 0) return;
    index_t n, h, s;
    rows.decode(first, n, h, s);
    for (int l = 0; l < count; ++l, rows.advance(n, h, s)) {
      if (l > 0 && h > 0) {
        next_head_runs(out.runs[l - 1], out.run_count[l - 1], out.runs[l], out.run_count[l]);
        next_head_masked(out.masked[l - 1], out.masked_count[l - 1], out.masked[l], out.masked_count[l]);
        continue;
      }
      out.run_count[l] = out.masked_count[l] = 0;
      // Source t's run is source 0's stepped t sources: one key_run (three offsets per tensor) per query.
      loss_row<T, true> run = key_run(n, h, 0, keys());
      for (index_t t = 0; t < rows.sources; ++t, step_runs(run, 0, 1)) {
        if (rows.valid(n, t))
          out.runs[l][out.run_count[l]++] = run;
        else
          out.masked[l][out.masked_count[l]++] = run.grad.ptr;
      }
    }
  }
  // A row's valid-source runs, one head on (see source_runs_of).
  void next_head_runs(const loss_row<T, true>* from, int count, loss_row<T, true>* to, int& to_count) const {
    for (int i = 0; i < count; ++i) {
      to[i] = from[i];
      step_runs(to[i], 1, 0);
    }
    to_count = count;
  }
  // A row's masked-source gradient runs, one head on (see source_runs_of).
  void next_head_masked(T* const* from, int count, T** to, int& to_count) const {
    const index_t grad_step = grad.stride[1];
    for (int i = 0; i < count; ++i) to[i] = from[i] + grad_step;
    to_count = count;
  }
  // Writes gradient 0 over the keys of joint row (n, h)'s masked sources.
  template <class Team>
  BEVKD_HOST_DEVICE void zero_masked_sources(const Team& team, index_t n, index_t h, bool accumulate) const {
    for (index_t t = 0; t < rows.sources; ++t)
      if (!rows.valid(n, t)) zero_keys(team, &grad(n, h, t, 0), accumulate);
  }
  // Writes gradient 0 (adds 0, when accumulating) over the K keys of one masked source from `first`.
  template <class Team>
  BEVKD_HOST_DEVICE void zero_keys(const Team& team, T* first, bool accumulate) const {
    const row_ref<T, true> masked{first, 1};
    team.for_columns(keys(), [masked, accumulate](index_t c) { write_grad(masked[c], acc_type(0), accumulate); });
  }
  // Source and student key of column c.
  BEVKD_HOST_DEVICE index_t source_of(index_t s, index_t c) const { return rows.joint ? c / keys() : s; }
  BEVKD_HOST_DEVICE index_t key_of(index_t c) const { return rows.joint ? c % keys() : c; }
  BEVKD_HOST_DEVICE bool valid_column(index_t n, index_t s, index_t c) const {
    return !rows.joint || rows.valid(n, source_of(s, c));
  }
  BEVKD_HOST_DEVICE T& grad_at(index_t n, index_t h, index_t s, index_t c) const {
    return grad(n, h, source_of(s, c), key_of(c));
  }
  // Student logit or probability (a logit's division by tau comes after its row's maximum is subtracted: see
  // softmax_exponent).
  BEVKD_HOST_DEVICE acc_type student_value(index_t n, index_t h, index_t s, index_t c) const {
    return load_as_accum(student(n, h, source_of(s, c), key_of(c)));
  }
  // Teacher logit (or probability) of teacher head j and level l within the student key's group.
  BEVKD_HOST_DEVICE acc_type teacher_value(index_t n, index_t h, index_t s, index_t c, int j, index_t l) const {
    const index_t k = key_of(c);
    const index_t k_t = points > 0 ? ((k / points) * level_group + l) * points + k % points : k;
    return load_as_accum(teacher(n, h * group + j, source_of(s, c), k_t));
  }
  template <class Team>
  BEVKD_HOST_DEVICE stats row_maxima(const Team& team, index_t n, index_t h, index_t s) const {
    stats lowest;
    for (int i = 0; i < 2 + max_head_group; ++i) lowest[i] = -math::infinity<acc_type>();
    return team.reduce_columns(max_op{}, lowest, columns(), [&](index_t c) {
      stats m = lowest;
      if (!valid_column(n, s, c)) return m;
      if (student_logits) m[0] = student_value(n, h, s, c);
      for (int j = 0; teacher_logits && j < group; ++j)
        for (index_t l = 0; l < level_group; ++l) m[2 + j] = max_op{}(m[2 + j], teacher_value(n, h, s, c, j, l));
      return m;
    });
  }
  template <class Team>
  BEVKD_HOST_DEVICE stats row_sums(const Team& team, index_t n, index_t h, index_t s, const stats& maxima) const {
    stats zero;
    for (int i = 0; i < 2 + max_head_group; ++i) zero[i] = acc_type(0);
    return team.reduce_columns(sum_op{}, zero, columns(), [&](index_t c) {
      stats z = zero;
      if (!valid_column(n, s, c)) return z;
      z[1] = acc_type(1);
      if (student_logits) z[0] = math::exp_nonpositive(softmax_exponent(student_value(n, h, s, c), maxima[0], inv_tau));
      for (int j = 0; teacher_logits && j < group; ++j)
        for (index_t l = 0; l < level_group; ++l)
          z[2 + j] += math::exp_nonpositive(softmax_exponent(teacher_value(n, h, s, c, j, l), maxima[2 + j], inv_tau));
      return z;
    });
  }
  // The pooled teacher probability of column c: mean over the head group of the level group's summed mass.
  BEVKD_HOST_DEVICE acc_type teacher_prob(index_t n, index_t h, index_t s, index_t c, const stats& maxima,
                                          const stats& sums) const {
    acc_type p = acc_type(0);
    for (int j = 0; j < group; ++j) {
      acc_type mass = acc_type(0);
      for (index_t l = 0; l < level_group; ++l) {
        const acc_type v = teacher_value(n, h, s, c, j, l);
        mass += teacher_logits ? math::exp_nonpositive(softmax_exponent(v, maxima[2 + j], inv_tau)) : v;
      }
      p += teacher_logits ? mass / sums[2 + j] : mass;
    }
    return p / static_cast<acc_type>(group);
  }
};

}  // namespace detail
}  // namespace bevkd
