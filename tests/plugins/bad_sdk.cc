// A plugin built with SDK 2.x (another major version): refused.
#include <insideout/sdk/abi.h>

namespace {
int init(const io_registrar*) { return 0; }
}  // namespace

extern "C" __attribute__((visibility("default"))) const io_plugin_info* insideout_plugin_v1(void) {
  static const io_plugin_info info = {IO_SDK_ABI_VERSION,
                                      sizeof(io_plugin_info),
                                      (2u << 16) | 3u,
                                      0,
                                      "bad_sdk",
                                      "1.0",
                                      init,
                                      nullptr};
  return &info;
}
