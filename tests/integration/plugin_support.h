// Test plugins (tests/plugins/) copied into a fresh directory of their own: the
// directory 0755 and each library 0644, owned by the test's user, so that a test decides
// every mode the daemon checks.
#pragma once

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>

namespace insideout::testing {

class PluginDir {
 public:
  // Copies <name>.so of the built test plugins for each name.
  explicit PluginDir(std::initializer_list<const char*> names) {
    char tmpl[] = "/tmp/insideout-plugins-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
    ::chmod(path_.c_str(), 0755);
    for (const char* n : names) add(n);
  }
  ~PluginDir() {
    std::error_code ec;
    ::chmod(path_.c_str(), 0700);
    std::filesystem::remove_all(path_, ec);
  }
  PluginDir(const PluginDir&) = delete;
  PluginDir& operator=(const PluginDir&) = delete;

  // Copies test plugin `name` as `as`.so (default: `name`.so).
  void add(const std::string& name, std::string as = {}) {
    if (as.empty()) as = name;
    std::error_code ec;
    std::filesystem::copy_file(std::string(INSIDEOUT_TEST_PLUGIN_DIR) + "/" + name + ".so",
                               file(as), std::filesystem::copy_options::overwrite_existing, ec);
    ::chmod(file(as).c_str(), 0644);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name + ".so"; }

 private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace insideout::testing
