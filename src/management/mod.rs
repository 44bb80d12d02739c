//! The management plane's device side: every device's kernel runs an
//! [`agent::Agent`] beside its function. The agent answers authenticated
//! requests ([`crate::wire::mgmt`]) on a TCP port of the device's own
//! stack: identity, the counters table, the function's configuration, a
//! new configuration or kind (validated, installed at once or refused with
//! nothing changed), and pcap captures of either network. The manager
//! device (`kind = "manager"`) and `shmnet ctl` are its clients.
//!
//! Traffic to and from the agent's port bypasses the function's hooks,
//! so no function (a deny-all firewall, an encrypting or shaping one) can
//! cut its device off from management; every request is signed with the
//! topology's secret and checked against replays instead.

pub mod agent;
pub mod settings;

pub use agent::{Agent, AgentCounters};
pub use settings::{DEFAULT_AGENT_PORT, Management};

/// Hands a manager device (`kind = "manager"`) what it needs to reach the
/// agents: the secret's file and their port, unless its configuration
/// names its own.
pub fn inform_manager(d: &mut crate::config::DeviceSettings, m: &Management) {
    #[cfg(feature = "manager")]
    if let crate::functions::FunctionConfig::Manager(c) = &mut d.function {
        c.secret_file.get_or_insert_with(|| m.secret_file.clone());
        c.agent_port.get_or_insert(m.agent_port);
        c.dry_run |= m.dry_run;
    }
    #[cfg(not(feature = "manager"))]
    let _ = (d, m);
}
