# Included by CMake right after project() in each package scripts/setup_ros_wheels.sh builds (-DCMAKE_PROJECT_INCLUDE).
#
# Why: the ROS 2 wheels on PyPI export, for every message package, an imported target
# <pkg>::<pkg>__rosidl_generator_py whose INTERFACE_INCLUDE_DIRECTORIES name two folders of the machine that built the
# wheels: /opt/python/cpXY-cpXY/include/pythonX.Y and /opt/python/cpXY-cpXY/lib/pythonX.Y/site-packages/numpy/_core/include.
# CMake stops with "Imported target ... includes non-existent path" when a package links to such a target (every
# message package that depends on std_msgs does). Instead of creating those folders (writes outside the workspace, as
# root) or editing the wheels' files, this swaps them, in the imported targets only, for the include folders of the
# Python that builds (Python3_EXECUTABLE) and of its numpy, at the end of the package's CMakeLists: nothing on disk
# changes.
cmake_minimum_required(VERSION 3.19)  # cmake_language(DEFER)

function(_lens_wheel_include_dirs)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c "import sysconfig, numpy; print(sysconfig.get_paths()['include']); print(numpy.get_include())"
    OUTPUT_VARIABLE found OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE failed)
  if(failed)
    message(FATAL_ERROR "wheel_include_dirs.cmake: Python3_EXECUTABLE='${Python3_EXECUTABLE}' cannot import numpy; "
                        "pass -DPython3_EXECUTABLE=<the venv's python> (scripts/setup_ros_wheels.sh does)")
  endif()
  string(REPLACE "\n" ";" found "${found}")
  list(GET found 0 python_include)
  list(GET found 1 numpy_include)
  get_property(targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs AND "${dirs}" MATCHES "(^|;)/opt/python/")
      list(TRANSFORM dirs REPLACE "^/opt/python/[^/]+/include/python[0-9.]+$" "${python_include}")
      list(TRANSFORM dirs REPLACE "^/opt/python/[^/]+/lib/python[0-9.]+/site-packages/numpy/_core/include$"
                                  "${numpy_include}")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${dirs}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _lens_wheel_include_dirs)
