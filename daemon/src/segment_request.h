// The segment a client asked for in its Hello, clamped to the daemon's limits: the one
// place where registration turns client-chosen numbers into a layout request. Pure (no
// socket, no daemon), so fuzz/fuzz_registration.cc drives it with decoded Hellos.
#pragma once

#include "insideout/shm/layout.h"
#include "insideout/v1/continuation.pb.h"

namespace insideout::daemon {

// Each field: 0 takes the default, anything else is capped at the maximum; frame_count's
// default is at most the chosen ring capacity. The result may still be refused by
// shm::SegmentGeometry::compute() (a capacity that is not a power of two, ...).
shm::SegmentRequest clamp_segment_request(const v1::SegmentRequest& asked,
                                          const shm::SegmentRequest& defaults,
                                          const shm::SegmentRequest& max) noexcept;

}  // namespace insideout::daemon
