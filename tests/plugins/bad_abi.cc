// A plugin of another ABI version (99): refused.
#include <insideout/sdk/abi.h>

namespace {
int init(const io_registrar*) { return 0; }
}  // namespace

extern "C" __attribute__((visibility("default"))) const io_plugin_info* insideout_plugin_v1(void) {
  static const io_plugin_info info = {
      99u, sizeof(io_plugin_info), IO_SDK_VERSION, 0, "bad_abi", "1.0", init, nullptr};
  return &info;
}
