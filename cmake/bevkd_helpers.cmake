# Helpers for bevkd's own tests, benchmarks and examples (not installed).
# SPDX-License-Identifier: Apache-2.0

# Warnings every bevkd-owned target compiles with: a header-only library's warnings land in
# every consumer's build, so our own builds treat them as errors.
function(bevkd_strict_warnings target)
  # _FORTIFY_SOURCE as Ubuntu's GCC enables it by default (its warnings, e.g. an ignored result of
  # std::system, broke the build on the GPU machine's image); optimised configurations only, as it needs -O.
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release,RelWithDebInfo,MinSizeRel>>:-U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=2>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra -Werror=all-warnings>)
endfunction()

# bevkd_add_test(<name> SOURCES <files...> [GPU]): a doctest executable linked with the shared
# doctest main, registered with CTest. GPU tests link the GPU main instead (tests/gpu_main.cu),
# which exits 77 where no device exists, so they are compiled everywhere and skip, labelled `gpu`.
function(bevkd_add_test name)
  cmake_parse_arguments(ARG "GPU" "" "SOURCES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  if(ARG_GPU)
    target_link_libraries(${name} PRIVATE bevkd::bevkd bevkd_doctest_gpu_main)
  else()
    target_link_libraries(${name} PRIVATE bevkd::bevkd bevkd_doctest_main)
  endif()
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  bevkd_strict_warnings(${name})
  add_test(NAME ${name} COMMAND ${name})
  if(ARG_GPU)
    set_tests_properties(${name} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77)
  else()
    set_tests_properties(${name} PROPERTIES LABELS cpu)
  endif()
endfunction()
