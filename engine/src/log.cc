#include "log.h"

#include <atomic>
#include <cstdio>

namespace insideout::engine {
namespace {

void to_stderr(LogLevel level, const std::string& message) {
  const char* tag = level == LogLevel::kError  ? "error"
                    : level == LogLevel::kWarn ? "warning"
                                               : "info";
  std::fprintf(stderr, "insideout: %s: %s\n", tag, message.c_str());
}

// Relaxed: set once before any worker runs (the threads' creation publishes it).
std::atomic<LogSink> sink{to_stderr};

}  // namespace

void set_log_sink(LogSink s) noexcept {
  sink.store(s != nullptr ? s : to_stderr, std::memory_order_relaxed);
}

void log(LogLevel level, const std::string& message) {
  sink.load(std::memory_order_relaxed)(level, message);
}

}  // namespace insideout::engine
