//! What SageMaker Studio leaves in the stack's VPC after use, released in `down` so the
//! security groups, subnets and VPC can go: network interfaces SageMaker still holds
//! (force-detached, as AWS's own Studio cleanup does), the mount targets of a home volume kept
//! when a domain was deleted without it (the volume itself, the users' data, stays), and
//! interfaces that are free, each deleted as it frees up. `up` has nothing to make here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{NetworkInterface, NetworkInterfaceStatus, NetworkInterfaceType};

use super::{every_page, filter, resource, Teardown};
use crate::aws::aws_error;
use crate::stack::Reconciler;
use crate::ProvisionError;

resource!(StudioLeftovers, "studio-leftovers");

/// How long interfaces may take to be let go (SageMaker's after an app stops can take
/// several minutes; mount targets about one).
const RELEASE_BOUND: Duration = Duration::from_secs(20 * 60);

async fn reconcile(_r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    Ok(())
}

/// Who holds an interface, and so how it is let go.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// Nobody: it can be deleted.
    Free,
    /// SageMaker, through an attachment it does not release by itself.
    SageMaker { attachment: String },
    /// A home volume's mount target: only deleting the mount target removes it.
    MountTarget { id: String },
    /// A NAT gateway (it goes with the gateway, later in `down`) or a service this stack does
    /// not run: not ours to touch.
    Other,
}

fn holder(i: &NetworkInterface) -> Holder {
    if i.interface_type() == Some(&NetworkInterfaceType::NatGateway) {
        return Holder::Other;
    }
    if i.status() == Some(&NetworkInterfaceStatus::Available) {
        return Holder::Free;
    }
    let description = i.description().unwrap_or_default();
    // "EFS mount target for fs-0123 (fsmt-0456)", as EFS describes the interfaces it makes.
    if let Some(rest) = description.strip_prefix("EFS mount target for ") {
        if let Some(id) = rest
            .split(['(', ')'])
            .map(str::trim)
            .find(|p| p.starts_with("fsmt-"))
        {
            return Holder::MountTarget { id: id.to_string() };
        }
    }
    let sagemaker = description.contains("SageMaker")
        || i.requester_id().unwrap_or_default().contains("sagemaker");
    match i.attachment().and_then(|a| a.attachment_id()) {
        Some(attachment) if sagemaker => Holder::SageMaker {
            attachment: attachment.to_string(),
        },
        _ => Holder::Other,
    }
}

fn code_of(e: &ProvisionError) -> &str {
    match e {
        ProvisionError::Aws { code, .. } => code,
        _ => "",
    }
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    let efs = t.clients.efs.clone();
    let started = Instant::now();
    let mut delay = Duration::from_secs(2);
    // Each detach and mount-target deletion is asked for once; what follows is waiting.
    let mut asked: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut waiting = Vec::new();
        for vpc in t.vpc_ids.clone() {
            let interfaces = every_page!(
                ec2.describe_network_interfaces()
                    .filters(filter("vpc-id", &vpc)),
                "network-interface",
                "DescribeNetworkInterfaces"
            )?;
            for i in &interfaces {
                let Some(id) = i.network_interface_id() else {
                    continue;
                };
                match holder(i) {
                    Holder::Free => {
                        if t.live() {
                            let deleted = ec2
                                .delete_network_interface()
                                .network_interface_id(id)
                                .send()
                                .await
                                .map_err(|e| {
                                    aws_error("network-interface", "DeleteNetworkInterface", e)
                                });
                            match deleted {
                                Ok(_) => {}
                                // Gone meanwhile, or taken again before it could go.
                                Err(e) if code_of(&e).ends_with("NotFound") => continue,
                                Err(e) if code_of(&e).ends_with("InUse") => {
                                    waiting.push(id.to_string());
                                    continue;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        t.say(format!("network-interface {id}"));
                    }
                    Holder::SageMaker { attachment } => {
                        if t.live() && asked.insert(attachment.clone()) {
                            let detached = ec2
                                .detach_network_interface()
                                .attachment_id(&attachment)
                                .force(true)
                                .send()
                                .await
                                .map_err(|e| {
                                    aws_error("network-interface", "DetachNetworkInterface", e)
                                });
                            match detached {
                                Ok(_) => t.note(&format!(
                                    "detached network interface {id} that SageMaker still held"
                                )),
                                Err(e) if code_of(&e).ends_with("NotFound") => {}
                                Err(e) => return Err(e),
                            }
                        } else if !t.live() {
                            t.note(&format!(
                                "would detach network interface {id}, which SageMaker holds, then delete it"
                            ));
                        }
                        waiting.push(id.to_string());
                    }
                    Holder::MountTarget { id: target } => {
                        if t.live() && asked.insert(target.clone()) {
                            let deleted = efs
                                .delete_mount_target()
                                .mount_target_id(&target)
                                .send()
                                .await
                                .map_err(|e| aws_error("efs-mount-target", "DeleteMountTarget", e));
                            match deleted {
                                Ok(_) => {}
                                Err(e) if code_of(&e) == "MountTargetNotFound" => {}
                                Err(e) => return Err(e),
                            }
                            t.say(format!("efs-mount-target {target} (the volume is kept)"));
                        } else if !t.live() {
                            t.say(format!("efs-mount-target {target} (the volume is kept)"));
                        }
                        waiting.push(id.to_string());
                    }
                    Holder::Other => {}
                }
            }
        }
        if waiting.is_empty() || !t.live() {
            return Ok(());
        }
        if started.elapsed() + delay > RELEASE_BOUND {
            return Err(ProvisionError::Timeout {
                resource: format!("network interfaces {}", waiting.join(", ")),
                waited: started.elapsed(),
                state: "in use".into(),
            });
        }
        (t.progress)(&format!(
            "waiting {}s for {} network interface(s) Studio left to be let go: {}",
            delay.as_secs(),
            waiting.len(),
            waiting.join(", ")
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::NetworkInterfaceAttachment;

    fn interface(status: &str, description: &str, attachment: Option<&str>) -> NetworkInterface {
        NetworkInterface::builder()
            .network_interface_id("eni-1")
            .status(NetworkInterfaceStatus::from(status))
            .description(description)
            .set_attachment(attachment.map(|a| {
                NetworkInterfaceAttachment::builder()
                    .attachment_id(a)
                    .build()
            }))
            .build()
    }

    #[test]
    fn each_holder_is_told_from_what_ec2_describes() {
        assert_eq!(holder(&interface("available", "", None)), Holder::Free);
        assert_eq!(
            holder(&interface(
                "in-use",
                "[DO NOT DELETE] ENI managed by SageMaker Studio domain d-1",
                Some("eni-attach-1")
            )),
            Holder::SageMaker {
                attachment: "eni-attach-1".into()
            }
        );
        assert_eq!(
            holder(&interface(
                "in-use",
                "EFS mount target for fs-0123 (fsmt-0456)",
                Some("ela-attach-1")
            )),
            Holder::MountTarget {
                id: "fsmt-0456".into()
            }
        );
        // Someone else's instance in the VPC: not detached from under it.
        assert_eq!(
            holder(&interface("in-use", "web server", Some("eni-attach-2"))),
            Holder::Other
        );
        let nat = NetworkInterface::builder()
            .status(NetworkInterfaceStatus::InUse)
            .interface_type(NetworkInterfaceType::NatGateway)
            .build();
        assert_eq!(holder(&nat), Holder::Other);
    }
}
