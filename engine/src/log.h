// The engine's few log lines go through a hook its host sets (the daemon: spdlog; the
// embedded runtime: stderr), so that the engine needs no logging backend.
#pragma once

#include <string>

namespace insideout::engine {

enum class LogLevel { kInfo, kWarn, kError };
using LogSink = void (*)(LogLevel level, const std::string& message);

// Set once, before any pool starts. Default: lines to stderr.
void set_log_sink(LogSink sink) noexcept;
void log(LogLevel level, const std::string& message);

}  // namespace insideout::engine
