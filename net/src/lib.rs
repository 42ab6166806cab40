//! Linux networking plumbing shared by the host library (connecting a pod's VM to the
//! network CNI made) and the guest agent (configuring the guest's interfaces): a blocking
//! rtnetlink socket with requests and dumps, tap devices, tc ingress redirects, and running
//! code inside another network namespace.

pub mod netlink;
pub mod netns;
pub mod tap;
pub mod tc;
