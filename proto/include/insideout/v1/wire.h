// One protobuf message per SOCK_SEQPACKET packet, with an optional file descriptor as
// SCM_RIGHTS ancillary data: the framing of the registration socket.
#pragma once

#include <google/protobuf/message_lite.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace insideout::v1 {

inline constexpr std::size_t kMaxPacket = 256 * 1024;
inline constexpr std::size_t kMaxFds = 4;  // descriptors one packet may carry

// Sends `msg` (and `fd` when >= 0). Returns 0 or an errno value.
int send_message(int sock, const google::protobuf::MessageLite& msg, int fd = -1);
// Sends `msg` with up to kMaxFds descriptors.
int send_message(int sock, const google::protobuf::MessageLite& msg, std::span<const int> fds);

enum class RecvStatus { kOk, kClosed, kWouldBlock, kError, kMalformed };
// Receives one packet into `msg`; a passed descriptor lands in *fd (else -1).
RecvStatus recv_message(int sock, google::protobuf::MessageLite* msg, int* fd = nullptr,
                        int* err = nullptr);
// Receives one packet; every passed descriptor (at most kMaxFds) lands in *fds.
RecvStatus recv_message_fds(int sock, google::protobuf::MessageLite* msg, std::vector<int>* fds,
                            int* err);

}  // namespace insideout::v1
