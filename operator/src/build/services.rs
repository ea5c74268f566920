//! The two Services of a cluster: the headless peer Service, through which nodes find each
//! other before anyone is Ready, and the client Service, which only routes to Ready nodes.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use troupe_contract::ports;

use super::Owner;

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// The headless peer Service `<name>-peers` (`publishNotReadyAddresses: true`).
pub fn desired_peer_service(owner: &Owner) -> Service {
    Service {
        metadata: owner.meta(owner.peer_service_name()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(owner.selector()),
            ports: Some(vec![
                port(ports::TRANSPORT_NAME, ports::TRANSPORT),
                port(ports::MANAGEMENT_NAME, ports::MANAGEMENT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The client Service `<name>` (ClusterIP, port 8080, Ready pods only).
pub fn desired_client_service(owner: &Owner) -> Service {
    Service {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(owner.selector()),
            ports: Some(vec![port(ports::CLIENT_NAME, ports::CLIENT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::owner;

    #[test]
    fn peer_service_is_headless_and_publishes_not_ready_pods() {
        let s = desired_peer_service(&owner());
        assert_eq!(s.metadata.name.as_deref(), Some("orders-peers"));
        let spec = s.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec.ports.expect("ports").iter().map(|p| p.port).collect();
        assert_eq!(ports, [25520, 8558]);
    }

    #[test]
    fn client_service_routes_8080_to_ready_pods_only() {
        let s = desired_client_service(&owner());
        assert_eq!(s.metadata.name.as_deref(), Some("orders"));
        let spec = s.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.publish_not_ready_addresses, None);
        let p = &spec.ports.expect("ports")[0];
        assert_eq!(p.port, 8080);
        assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
        let sel = spec.selector.expect("selector");
        assert_eq!(
            sel.get("app.kubernetes.io/instance").map(String::as_str),
            Some("orders")
        );
        assert_eq!(sel.len(), 2);
    }
}
