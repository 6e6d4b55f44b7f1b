# Extracts the C++ block after a `<!-- snippet:NAME -->` marker in README.md into a source file.
# SPDX-License-Identifier: Apache-2.0

# bevkd_readme_snippet(<name> <output-file>): fails the configure if the marker or block is missing,
# so the README cannot drift from code the tests compile.
function(bevkd_readme_snippet name output)
  set(readme ${PROJECT_SOURCE_DIR}/README.md)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${readme})
  file(READ ${readme} text)
  set(opening "<!-- snippet:${name} -->\n```cpp\n")
  string(FIND "${text}" "${opening}" start)
  if(start EQUAL -1)
    message(FATAL_ERROR "README.md has no `<!-- snippet:${name} -->` followed by a ```cpp block")
  endif()
  string(LENGTH "${opening}" opening_length)
  math(EXPR start "${start} + ${opening_length}")
  string(SUBSTRING "${text}" ${start} -1 rest)
  string(FIND "${rest}" "\n```" stop)
  string(SUBSTRING "${rest}" 0 ${stop} code)
  file(CONFIGURE OUTPUT ${output} CONTENT "${code}\n" @ONLY)
endfunction()
