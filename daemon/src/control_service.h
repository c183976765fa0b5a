// What the control plane's server (control_server.cc) needs of its gRPC service (the
// handlers, control.cc): to make it, register it, open its local client, stop it.
#pragma once

#include <memory>

#include "config.h"
#include "control.h"

namespace grpc {
class Service;
}

namespace insideout::daemon {

std::unique_ptr<SchedulerService, ServiceDeleter> make_service(ControlServer& server,
                                                               Daemon& daemon);
grpc::Service* as_grpc_service(SchedulerService& s);
void open_local_client(SchedulerService& s);
void service_stopping(SchedulerService& s);
absl::Status service_apply_pools(SchedulerService& s, const DaemonConfig& next,
                                 const DaemonConfig& old);

}  // namespace insideout::daemon
