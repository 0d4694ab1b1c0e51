# Fetch the llama-cpp-python sdist (cached, hash-checked), extract its vendored
# llama.cpp tree and apply our patches. The patched tree is rebuilt from scratch
# only when the sdist or a patch changes; otherwise it is left untouched so an
# unchanged tree does not rebuild.

function(tappa_find_python out_var)
    if(DEFINED TAPPA_PYTHON AND EXISTS "${TAPPA_PYTHON}")
        set(${out_var} "${TAPPA_PYTHON}" PARENT_SCOPE)
        return()
    endif()
    find_package(Python3 COMPONENTS Interpreter QUIET)
    if(NOT Python3_Interpreter_FOUND)
        message(FATAL_ERROR
            "tappa-local: a Python interpreter with pip is needed to fetch llama-cpp-python's sdist. "
            "Pass -DTAPPA_PYTHON=/path/to/python.")
    endif()
    set(${out_var} "${Python3_EXECUTABLE}" PARENT_SCOPE)
endfunction()

function(tappa_fetch_sdist version name sha256 cache_dir out_var)
    set(sdist "${cache_dir}/${name}")
    if(EXISTS "${sdist}")
        file(SHA256 "${sdist}" have)
        if(NOT have STREQUAL sha256)
            message(WARNING "tappa-local: cached ${sdist} has sha256 ${have}, expected ${sha256}; fetching again")
            file(REMOVE "${sdist}")
        endif()
    endif()
    if(NOT EXISTS "${sdist}")
        tappa_find_python(python)
        file(MAKE_DIRECTORY "${cache_dir}")
        message(STATUS "tappa-local: fetching llama-cpp-python==${version} sdist with pip into ${cache_dir}")
        execute_process(
            COMMAND "${python}" -m pip download --no-deps --no-binary :all: --disable-pip-version-check
                    "llama-cpp-python==${version}" -d "${cache_dir}"
            RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
        if(NOT rc EQUAL 0 OR NOT EXISTS "${sdist}")
            message(FATAL_ERROR
                "tappa-local: could not fetch llama-cpp-python==${version} with pip (exit ${rc}).\n${err}\n"
                "Place ${name} in ${cache_dir} by hand (or set TAPPA_CACHE_DIR) and configure again.")
        endif()
        file(SHA256 "${sdist}" have)
        if(NOT have STREQUAL sha256)
            file(REMOVE "${sdist}")
            message(FATAL_ERROR "tappa-local: downloaded ${name} has sha256 ${have}, expected ${sha256}")
        endif()
    endif()
    set(${out_var} "${sdist}" PARENT_SCOPE)
endfunction()

# Paths a patch touches ("+++ b/src/x.cpp" lines).
function(tappa_patched_files patch out_var)
    file(STRINGS "${patch}" lines REGEX "^\\+\\+\\+ ")
    set(files "")
    foreach(l IN LISTS lines)
        string(REGEX REPLACE "^\\+\\+\\+ [^/\t]+/([^\t]+).*$" "\\1" f "${l}")
        list(APPEND files "${f}")
    endforeach()
    set(${out_var} "${files}" PARENT_SCOPE)
endfunction()

function(tappa_prepare_llama_source)
    cmake_parse_arguments(ARG "" "SDIST_VERSION;SDIST_NAME;SDIST_SHA256;CACHE_DIR;DEST_DIR;OUT_VAR" "PATCHES" ${ARGN})

    # the stamp covers the sdist and the exact bytes of every patch
    set(stamp_text "sdist=${ARG_SDIST_SHA256}\n")
    set(new_files "")
    foreach(p IN LISTS ARG_PATCHES)
        file(SHA256 "${p}" h)
        get_filename_component(pn "${p}" NAME)
        string(APPEND stamp_text "patch ${pn}=${h}\n")
        tappa_patched_files("${p}" pf)
        list(APPEND new_files ${pf})
    endforeach()
    foreach(f IN LISTS new_files)
        string(APPEND stamp_text "file ${f}\n")
    endforeach()

    set(stamp_file "${ARG_DEST_DIR}/.tappa-stamp")
    set(old_stamp "")
    if(EXISTS "${stamp_file}")
        file(READ "${stamp_file}" old_stamp)
        if(old_stamp STREQUAL stamp_text)
            set(${ARG_OUT_VAR} "${ARG_DEST_DIR}" PARENT_SCOPE)
            return()
        endif()
    endif()

    tappa_fetch_sdist(${ARG_SDIST_VERSION} ${ARG_SDIST_NAME} ${ARG_SDIST_SHA256} "${ARG_CACHE_DIR}" sdist)

    find_program(TAPPA_PATCH_EXE patch)
    if(ARG_PATCHES AND NOT TAPPA_PATCH_EXE)
        message(FATAL_ERROR "tappa-local: the 'patch' program is needed to apply native/patches (apt install patch)")
    endif()

    message(STATUS "tappa-local: extracting vendor/llama.cpp from ${ARG_SDIST_NAME}")
    set(tmp "${ARG_DEST_DIR}.extract")
    file(REMOVE_RECURSE "${tmp}")
    set(root "llama_cpp_python-${ARG_SDIST_VERSION}")
    file(ARCHIVE_EXTRACT INPUT "${sdist}" DESTINATION "${tmp}" PATTERNS "${root}/vendor/llama.cpp")
    set(fresh "${tmp}/${root}/vendor/llama.cpp")
    if(NOT EXISTS "${fresh}/CMakeLists.txt")
        message(FATAL_ERROR "tappa-local: ${sdist} does not contain vendor/llama.cpp")
    endif()
    # the submodule's .git file points into the sdist's parent repo, which is not there
    file(REMOVE "${fresh}/.git")

    foreach(p IN LISTS ARG_PATCHES)
        message(STATUS "tappa-local: applying ${p}")
        execute_process(
            COMMAND "${TAPPA_PATCH_EXE}" -p1 --forward --batch --no-backup-if-mismatch -i "${p}"
            WORKING_DIRECTORY "${fresh}"
            RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
        if(NOT rc EQUAL 0)
            file(REMOVE_RECURSE "${tmp}")
            message(FATAL_ERROR "tappa-local: patch ${p} does not apply to llama-cpp-python ${ARG_SDIST_VERSION}:\n${out}\n${err}")
        endif()
    endforeach()

    string(FIND "${old_stamp}" "sdist=${ARG_SDIST_SHA256}\n" same_sdist)
    if(same_sdist EQUAL 0 AND EXISTS "${ARG_DEST_DIR}/CMakeLists.txt")
        # same upstream tree: refresh only the files some patch touches (now or
        # before), and only where their bytes change, so the rebuild stays small
        string(REGEX MATCHALL "file [^\n]+" old_lines "${old_stamp}")
        set(all_files ${new_files})
        foreach(l IN LISTS old_lines)
            string(SUBSTRING "${l}" 5 -1 f)
            list(APPEND all_files "${f}")
        endforeach()
        list(REMOVE_DUPLICATES all_files)
        foreach(f IN LISTS all_files)
            if(EXISTS "${fresh}/${f}")
                file(COPY_FILE "${fresh}/${f}" "${ARG_DEST_DIR}/${f}" ONLY_IF_DIFFERENT)
            else()
                file(REMOVE "${ARG_DEST_DIR}/${f}")
            endif()
        endforeach()
    else()
        file(REMOVE_RECURSE "${ARG_DEST_DIR}")
        file(RENAME "${fresh}" "${ARG_DEST_DIR}")
    endif()
    file(REMOVE_RECURSE "${tmp}")

    file(WRITE "${stamp_file}" "${stamp_text}")
    set(${ARG_OUT_VAR} "${ARG_DEST_DIR}" PARENT_SCOPE)
endfunction()
