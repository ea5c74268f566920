//! Least privilege, asked of the API server itself: what the operator's and the nodes'
//! ServiceAccounts may do, as the chart installs them (the suite runs under exactly those
//! roles).
//!
//! * The operator holds no Lease write outside its own leader Lease: it grants the node's
//!   rights by `bind`ing the chart's node ClusterRole, not by holding them (the review's
//!   finding: it could rewrite `kube-system`'s leader Leases).
//! * A node holds its rights only in its own namespace, reads no Secret, and the chart's
//!   admission policy refuses a write by one cluster's node to another cluster's member
//!   Lease in the same namespace (the request is sent impersonating the node).

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use troupe_contract::coordination;
use troupe_e2e::{TestContext, actor_cluster, with_namespace};

const OPERATOR: &str = "system:serviceaccount:troupe-system:troupe";

/// Whether `user` may `verb` `resource` (in `group`, `namespace`, named `name`).
async fn may(
    ctx: &TestContext,
    user: &str,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                verb: Some(verb.to_owned()),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("asking the API server a SubjectAccessReview")?;
    let allowed = answer.status.is_some_and(|s| s.allowed);
    println!(
        "can-i {user} {verb} {group}/{resource} {} {}: {allowed}",
        namespace.unwrap_or("(cluster)"),
        name.unwrap_or("*")
    );
    Ok(allowed)
}

const LEASES: (&str, &str) = ("coordination.k8s.io", "leases");

#[tokio::test]
async fn the_operator_binds_the_node_role_instead_of_holding_lease_write() -> anyhow::Result<()> {
    with_namespace("rbac-operator", |ctx| async move {
        for verb in ["update", "patch", "create", "delete"] {
            ensure!(
                !may(&ctx, OPERATOR, verb, LEASES, Some("kube-system"), None).await?,
                "the operator may {verb} Leases in kube-system"
            );
            ensure!(
                !may(&ctx, OPERATOR, verb, LEASES, Some(&ctx.namespace), None).await?,
                "the operator may {verb} Leases in a user namespace"
            );
        }
        ensure!(
            may(&ctx, OPERATOR, "list", LEASES, None, None).await?,
            "the operator cannot read member Leases (status needs them)"
        );
        ensure!(
            may(
                &ctx,
                OPERATOR,
                "update",
                LEASES,
                Some("troupe-system"),
                Some("troupe-operator-leader")
            )
            .await?,
            "the operator cannot renew its leader Lease"
        );
        ensure!(
            may(
                &ctx,
                OPERATOR,
                "bind",
                ("rbac.authorization.k8s.io", "clusterroles"),
                None,
                Some("troupe-node"),
            )
            .await?,
            "the operator may not bind the node ClusterRole"
        );
        ensure!(
            !may(
                &ctx,
                OPERATOR,
                "bind",
                ("rbac.authorization.k8s.io", "clusterroles"),
                None,
                Some("cluster-admin"),
            )
            .await?,
            "the operator may bind cluster-admin"
        );
        for verb in ["create", "patch", "escalate"] {
            ensure!(
                !may(
                    &ctx,
                    OPERATOR,
                    verb,
                    ("rbac.authorization.k8s.io", "roles"),
                    Some(&ctx.namespace),
                    None
                )
                .await?,
                "the operator may {verb} Roles"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_node_writes_only_its_own_member_lease_in_its_own_namespace() -> anyhow::Result<()> {
    with_namespace("rbac-node", |ctx| async move {
        for name in ["alpha", "beta"] {
            actor_cluster::create(
                &ctx,
                name,
                json!({ "replicas": 1, "image": "troupe-node:0.1.0" }),
            )
            .await?;
        }
        for name in ["alpha", "beta"] {
            actor_cluster::until_settled(&ctx, name, 1, Duration::from_secs(180)).await?;
        }
        let node = format!("system:serviceaccount:{}:alpha-node", ctx.namespace);
        let own = coordination::lease_name("alpha");
        let ns = Some(ctx.namespace.as_str());
        ensure!(
            may(&ctx, &node, "update", LEASES, ns, Some(&own)).await?,
            "the node cannot update its own Lease"
        );
        ensure!(
            !may(&ctx, &node, "update", LEASES, Some("kube-system"), None).await?,
            "the node may update Leases in kube-system"
        );
        ensure!(
            !may(&ctx, &node, "update", LEASES, Some("default"), Some(&own)).await?,
            "the node may update Leases in another namespace"
        );
        for verb in ["get", "list"] {
            ensure!(
                !may(&ctx, &node, verb, ("", "secrets"), ns, None).await?,
                "the node may {verb} Secrets"
            );
        }
        ensure!(
            !may(&ctx, &node, "delete", LEASES, ns, Some(&own)).await?,
            "the node may delete its Lease"
        );

        // RBAC lets alpha's node update any Lease of the namespace (a ClusterRole cannot
        // name each cluster's Lease); the admission policy must refuse beta's.
        let mut config = kube::Config::infer()
            .await
            .context("the admin kubeconfig")?;
        config.auth_info.impersonate = Some(node.clone());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", ctx.namespace),
            "system:authenticated".to_owned(),
        ]);
        let as_alpha: Api<Lease> = Api::namespaced(
            kube::Client::try_from(config).context("an impersonating client")?,
            &ctx.namespace,
        );
        let theirs = coordination::lease_name("beta");
        let mut lease = as_alpha
            .get(&theirs)
            .await
            .context("alpha's node reads beta's Lease (RBAC allows reading)")?;
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("troupe.dev/forged".to_owned(), "yes".to_owned());
        let refused = as_alpha
            .replace(&theirs, &PostParams::default(), &lease)
            .await;
        match &refused {
            Err(kube::Error::Api(s)) => println!(
                "alpha-node replacing {theirs}: {} {}: {}",
                s.code, s.reason, s.message
            ),
            Err(e) => println!("alpha-node replacing {theirs}: {e}"),
            Ok(_) => println!("alpha-node replacing {theirs}: accepted"),
        }
        ensure!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("node ServiceAccount")),
            "alpha's node rewrote beta's member Lease: {refused:?}"
        );
        let after = ctx.api::<Lease>().get(&theirs).await?;
        ensure!(
            !after
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("troupe.dev/forged"),
            "beta's Lease carries alpha's forgery"
        );
        // Both clusters still stand: their nodes write their own Leases through the policy.
        for name in ["alpha", "beta"] {
            actor_cluster::until_settled(&ctx, name, 1, Duration::from_secs(60)).await?;
        }
        Ok(())
    })
    .await
}
