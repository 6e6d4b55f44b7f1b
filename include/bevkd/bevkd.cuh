// bevkd CUDA umbrella header: everything in bevkd.hpp plus the CUDA backend (compile with nvcc).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "bevkd.hpp"
#include "core/cuda_backend.cuh"
