# bevkd packaging tests: the consumer executable both test projects build, warnings as errors.
# SPDX-License-Identifier: Apache-2.0
add_executable(bevkd_consumer ${CMAKE_CURRENT_LIST_DIR}/consumer.cpp)
target_link_libraries(bevkd_consumer PRIVATE bevkd::bevkd)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(bevkd_consumer PRIVATE -Wall -Wextra -Werror)
endif()
