// bevkd weight inheritance umbrella: every inherit header (needs nlohmann/json; link bevkd::inherit).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "format_error.hpp"
#include "name_pattern.hpp"
#include "remap.hpp"
#include "report.hpp"
#include "rules.hpp"
#include "safetensors.hpp"
#include "tensor.hpp"
#include "transforms.hpp"
