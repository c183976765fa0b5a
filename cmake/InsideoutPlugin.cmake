# insideout_add_plugin(<target> <sources>...): a plugin for insideoutd --plugin-dir.
#
# A shared library without the "lib" prefix, built against insideout::sdk, with hidden
# visibility (only the entry point, insideout_plugin_v1, is exported: two plugins' copies
# of the SDK's inline functions never bind to each other) and without GNU unique symbols
# (they would keep the library mapped after an unload).
function(insideout_add_plugin target)
  add_library(${target} MODULE ${ARGN})
  target_link_libraries(${target} PRIVATE insideout::sdk)
  set_target_properties(${target} PROPERTIES PREFIX "" CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE -fno-gnu-unique)
  endif()
endfunction()
