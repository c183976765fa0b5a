// Validation of one continuation descriptor a client wrote into its segment: the pure
// half of the trust boundary. The scheduler copies the frame out of shared memory once
// and hands the copy here; nothing in this file reads the segment, so the checks can be
// unit-tested and fuzzed without a scheduler (fuzz/fuzz_frame.cc) and a client cannot
// change a field between its check and its use.
#pragma once

#include <cstdint>
#include <variant>

#include "engine.h"
#include "insideout/shm/layout.h"

namespace insideout::daemon {

// What a valid descriptor becomes: the fields of its Task.
struct ValidFrame {
  const FunctionDef* def = nullptr;
  std::uint64_t arg = 0;         // <= def->max_arg
  std::uint64_t env = 0;         // Task::w1: (env_len << 32) | env_off, or env_len << 32 inline
  std::uint16_t task_flags = 0;  // kTaskEnvInline or 0
};

// Why a descriptor was refused: the frame is completed with these.
struct FrameError {
  shm::Status status = shm::Status::kInvalidArgument;
  shm::ErrorDetail detail = shm::ErrorDetail::kNone;
};

using FrameCheck = std::variant<ValidFrame, FrameError>;

// Checks flags, function id, environment (inline length, or a range inside the buffer
// area of `g`) and argument. The frame's own offset is the caller's to check
// (SegmentGeometry::frame_offset_valid): a bad offset has no frame to complete.
FrameCheck check_frame(const shm::Frame& copy, const shm::SegmentGeometry& g,
                       const FunctionRegistry& registry) noexcept;

}  // namespace insideout::daemon
