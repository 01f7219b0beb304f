# Injected into llama-cpp-python's CMake build with -DCMAKE_PROJECT_INCLUDE (tools/llama_cpp/build.sh).
#
# Why: a native build (-march=native) depends on the build machine's CPU, and on CPUs with AMX
# it compiles ggml's AMX kernels, whose Q4_K matrix product segfaults in llama_decode
# (ggml_backend_amx_mul_mat, llama.cpp issue 20824; the embedded gemma-3-270m is Q4_K_M).
# Instead ggml is built with GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS: one CPU backend library
# per x86-64 level, and at run time ggml loads the best one the CPU supports
# (mi_llm.llm.llamacpp_build.load_cpu_backend). Here we
#   - install the variant libraries next to libllama.so (llama-cpp-python installs only a
#     single `ggml-cpu` target, which a variants build does not have), and
#   - leave out the variants we do not ship: `sapphirerapids` (the AMX one) and a few rare
#     intermediate levels (ivybridge, piledriver, cannonlake, cooperlake: a CPU of one of those
#     gets the next level down). They are still compiled: in a GGML_BACKEND_DL build the ggml
#     target depends on every backend, so they cannot be dropped from the build without
#     patching llama.cpp; they are just not installed.
# An AMX CPU then runs the `zen4` variant (AVX-512 VBMI/VNNI/BF16), the fastest path that works.

set(MI_LLM_GGML_CPU_VARIANTS x64 sse42 sandybridge haswell alderlake skylakex cascadelake icelake zen4
    CACHE STRING "ggml CPU backend variants shipped in the llama-cpp-python wheel")

function(mi_llm_install_ggml_cpu_variants)
    foreach(tag ${MI_LLM_GGML_CPU_VARIANTS})
        if(NOT TARGET ggml-cpu-${tag})
            message(FATAL_ERROR "mi-llm: ggml CPU variant ${tag} is not defined by this llama.cpp "
                                "(build with -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON)")
        endif()
        set_target_properties(ggml-cpu-${tag} PROPERTIES INSTALL_RPATH "$ORIGIN" BUILD_WITH_INSTALL_RPATH TRUE)
        install(TARGETS ggml-cpu-${tag}
                LIBRARY DESTINATION ${SKBUILD_PLATLIB_DIR}/llama_cpp/lib
                RUNTIME DESTINATION ${SKBUILD_PLATLIB_DIR}/llama_cpp/lib)
    endforeach()
endfunction()

# CMAKE_PROJECT_INCLUDE runs at the top-level project() call, before llama.cpp's targets exist:
# defer the work to the end of the top-level directory, after add_subdirectory(vendor/llama.cpp).
if(CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR AND NOT MI_LLM_VARIANTS_HOOKED)
    set(MI_LLM_VARIANTS_HOOKED TRUE)
    cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL mi_llm_install_ggml_cpu_variants)
endif()
