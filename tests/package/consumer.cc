#include <cstdio>
#include <insideout/client.hpp>

int main() {
  insideout::ClientOptions o;
  o.socket_path = "/nonexistent/daemon.sock";
  auto c = insideout::Client::connect(o);
  // No daemon there: the library must say so, naming the path.
  std::printf("%s\n", std::string(c.status().message()).c_str());
  return c.ok() ? 1 : 0;
}
