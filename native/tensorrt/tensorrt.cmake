# cascade_tensorrt.node: the TensorRT engine binding. Built only when the CUDA runtime and
# TensorRT (headers, nvinfer, nvonnxparser) are found; otherwise one status line says what is
# missing and the rest of the project builds and runs without it (ONNX Runtime engines).
#
# Hints: -DTENSORRT_ROOT=/opt/tensorrt (or the TENSORRT_ROOT environment variable through
# native/build.mjs), -DCUDAToolkit_ROOT=/usr/local/cuda. NVIDIA's TensorRT containers
# (nvcr.io/nvidia/tensorrt) have both on the default paths.

set(_trt_missing "")

find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  list(APPEND _trt_missing "CUDA toolkit (set CUDAToolkit_ROOT)")
endif()

set(_trt_hints ${TENSORRT_ROOT} $ENV{TENSORRT_ROOT} /usr/local/tensorrt /opt/tensorrt)
find_path(TENSORRT_INCLUDE_DIR NvInfer.h HINTS ${_trt_hints} PATH_SUFFIXES include include/x86_64-linux-gnu)
find_library(TENSORRT_NVINFER nvinfer HINTS ${_trt_hints} PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
find_library(TENSORRT_ONNXPARSER nvonnxparser HINTS ${_trt_hints} PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
if(NOT TENSORRT_INCLUDE_DIR)
  list(APPEND _trt_missing "TensorRT headers NvInfer.h (set TENSORRT_ROOT)")
endif()
if(NOT TENSORRT_NVINFER OR NOT TENSORRT_ONNXPARSER)
  list(APPEND _trt_missing "TensorRT libraries (libnvinfer, libnvonnxparser)")
endif()

if(_trt_missing)
  string(JOIN ", " _trt_missing_text ${_trt_missing})
  message(STATUS "cascade_tensorrt: not built, missing ${_trt_missing_text}; the gateway uses ONNX Runtime engines")
  return()
endif()

# TensorRT major version from NvInferVersion.h: "#define NV_TENSORRT_MAJOR 10" in older
# releases, "#define TRT_MAJOR_ENTERPRISE 10" (NV_TENSORRT_MAJOR aliasing it) in newer ones.
file(STRINGS "${TENSORRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_lines REGEX "#define (NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)")
foreach(_part MAJOR MINOR PATCH)
  set(TENSORRT_${_part} "")
  if(_trt_version_lines MATCHES "NV_TENSORRT_${_part} ([0-9]+)")
    set(TENSORRT_${_part} ${CMAKE_MATCH_1})
  elseif(_trt_version_lines MATCHES "TRT_${_part}_ENTERPRISE ([0-9]+)")
    set(TENSORRT_${_part} ${CMAKE_MATCH_1})
  endif()
endforeach()
set(TENSORRT_VERSION "${TENSORRT_MAJOR}.${TENSORRT_MINOR}.${TENSORRT_PATCH}")
if(NOT TENSORRT_MAJOR OR TENSORRT_MAJOR LESS 10)
  message(STATUS "cascade_tensorrt: not built, TensorRT ${TENSORRT_VERSION} found but 10.x or later is required (named I/O tensors, enqueueV3)")
  return()
endif()

add_library(cascade_tensorrt SHARED
  tensorrt/binding.cc
  tensorrt/engine.cc
  ${CMAKE_JS_SRC})
set_target_properties(cascade_tensorrt PROPERTIES PREFIX "" SUFFIX ".node")
target_include_directories(cascade_tensorrt PRIVATE ${CMAKE_JS_INC})
# SYSTEM: TensorRT's own headers use their deprecated plugin interfaces.
target_include_directories(cascade_tensorrt SYSTEM PRIVATE ${TENSORRT_INCLUDE_DIR})
target_link_libraries(cascade_tensorrt PRIVATE ${CMAKE_JS_LIB} ${TENSORRT_NVINFER} ${TENSORRT_ONNXPARSER} CUDA::cudart)
target_compile_options(cascade_tensorrt PRIVATE ${CASCADE_FLAGS})
message(STATUS "cascade_tensorrt: building against TensorRT ${TENSORRT_VERSION}, CUDA ${CUDAToolkit_VERSION}")
