# Packaging: the pkg-config file, the man pages and the systemd files (their own folders),
# and the Debian package (CPack's DEB generator: `cpack --preset deb`, after building the
# `package` preset; deploy/test-deb.sh builds and checks it).

if(INSIDEOUT_CLIENT_SHARED)
  file(RELATIVE_PATH INSIDEOUT_PC_TO_PREFIX /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/insideout.pc.in ${PROJECT_BINARY_DIR}/insideout.pc
    @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/insideout.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
add_subdirectory(${PROJECT_SOURCE_DIR}/man ${PROJECT_BINARY_DIR}/man)
add_subdirectory(${PROJECT_SOURCE_DIR}/systemd ${PROJECT_BINARY_DIR}/systemd)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/DEPLOY.md
  DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_PACKAGE_NAME insideout)
set(CPACK_PACKAGE_VENDOR insideout)
set(CPACK_PACKAGE_CONTACT "insideout maintainers <insideout@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "continuation scheduler daemon, its control tool and client library")
set(CPACK_PACKAGE_DESCRIPTION
  "insideoutd owns the machine's worker threads, pinned to cores; client processes hand it\ncontinuations through shared memory. With insideoutctl, libinsideout, its headers,\nCMake and pkg-config files, and the systemd units (socket-activated, hardened).")
set(CPACK_PACKAGE_HOMEPAGE_URL "https://github.com/disruptek/insideout")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Dependencies from the ELF files (dpkg-shlibdeps), plus what the maintainer scripts use.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "systemd, init-system-helpers")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${PROJECT_SOURCE_DIR}/deploy/debian/postinst ${PROJECT_SOURCE_DIR}/deploy/debian/prerm
  ${PROJECT_SOURCE_DIR}/deploy/debian/postrm ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles
  ${PROJECT_SOURCE_DIR}/deploy/debian/triggers)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
