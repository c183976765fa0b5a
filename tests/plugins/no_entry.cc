// A shared library without insideout_plugin_v1: refused.
extern "C" __attribute__((visibility("default"))) int not_a_plugin(void) { return 42; }
