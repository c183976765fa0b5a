#include "frame_check.h"

#include "engine.h"

namespace insideout::daemon {

using engine::kTaskEnvInline;
using shm::ErrorDetail;
using shm::Status;

FrameCheck check_frame(const shm::Frame& f, const shm::SegmentGeometry& g,
                       const FunctionRegistry& registry) noexcept {
  if ((f.flags & ~shm::kFrameKnownFlags) != 0)
    return FrameError{Status::kInvalidArgument, ErrorDetail::kUnknownFlags};
  const FunctionDef* def = registry.find(f.fn);
  if (def == nullptr) return FrameError{Status::kUnknownFunction, ErrorDetail::kUnknownFunction};
  ValidFrame v;
  v.def = def;
  if (f.flags & shm::kFrameEnvInline) {
    if (f.env_len > shm::kInlineCapacity)
      return FrameError{Status::kInvalidArgument, ErrorDetail::kInlineTooLong};
    if (def->needs_buffer)
      return FrameError{Status::kInvalidArgument, ErrorDetail::kBufferRequired};
    v.task_flags = kTaskEnvInline;
    v.env = std::uint64_t{f.env_len} << 32;
  } else if (f.env_len != 0) {
    if (!g.buffer_range_valid(f.env_off, f.env_len))
      return FrameError{Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment};
    v.env = (std::uint64_t{f.env_len} << 32) | f.env_off;
  } else if (def->needs_buffer) {
    return FrameError{Status::kInvalidArgument, ErrorDetail::kBufferRequired};
  }
  if (f.arg > def->max_arg)
    return FrameError{Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange};
  v.arg = f.arg;
  return v;
}

}  // namespace insideout::daemon
