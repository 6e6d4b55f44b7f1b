// bevkd umbrella header: every host-readable public header (CUDA backends: include bevkd/bevkd.cuh).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/host_backend.hpp"
#include "core/math.hpp"
#include "core/reduction.hpp"
#include "core/team.hpp"
#include "core/view.hpp"
#include "losses/attention_distill.hpp"
#include "losses/bevformer_attention.hpp"
#include "losses/feature_mse.hpp"
#include "losses/response_kl.hpp"
#include "losses/sampling_location_distill.hpp"
#include "ops/resample.hpp"
