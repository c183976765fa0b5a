// One protobuf message per SOCK_SEQPACKET packet, with an optional file descriptor as
// SCM_RIGHTS ancillary data: the framing of the registration socket.
#pragma once

#include <google/protobuf/message_lite.h>

#include <cstddef>
#include <string>

namespace insideout::v1 {

inline constexpr std::size_t kMaxPacket = 256 * 1024;

// Sends `msg` (and `fd` when >= 0). Returns 0 or an errno value.
int send_message(int sock, const google::protobuf::MessageLite& msg, int fd = -1);

enum class RecvStatus { kOk, kClosed, kWouldBlock, kError, kMalformed };
// Receives one packet into `msg`; a passed descriptor lands in *fd (else -1).
RecvStatus recv_message(int sock, google::protobuf::MessageLite* msg, int* fd = nullptr,
                        int* err = nullptr);

}  // namespace insideout::v1
