//! The SNS target: one Publish per alert, the JSON as the Message, a printable Subject; signed
//! for the topic's region (from its ARN), whatever `[aws] region` says.

use super::text::Alert;
use super::ATTEMPT_TIMEOUT;

pub struct Sns {
    client: aws_sdk_sns::Client,
    arn: String,
}

impl Sns {
    pub fn new(shared: &aws_config::SdkConfig, arn: &str) -> Sns {
        let region = arn.split(':').nth(3).unwrap_or_default().to_owned();
        let conf = aws_sdk_sns::config::Builder::from(shared)
            .region(aws_sdk_sns::config::Region::new(region))
            .build();
        Sns {
            client: aws_sdk_sns::Client::from_conf(conf),
            arn: arn.to_owned(),
        }
    }

    /// Ok: "MessageId …". Err: why not, with the IAM statement to add when access is denied.
    pub async fn publish(&self, alert: &Alert, json: String) -> Result<String, String> {
        let publish = self
            .client
            .publish()
            .topic_arn(&self.arn)
            .subject(alert.subject())
            .message(json)
            .send();
        match tokio::time::timeout(ATTEMPT_TIMEOUT, publish).await {
            Err(_) => Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())),
            Ok(Ok(out)) => Ok(format!("MessageId {}", out.message_id().unwrap_or("?"))),
            Ok(Err(e)) => {
                use crate::aws::AwsError;
                let (AwsError::Transient(mut m)
                | AwsError::Permanent(mut m)
                | AwsError::Busy(mut m)) = crate::aws::classify("Publish", &e);
                if m.contains("AccessDenied") || m.contains("HTTP 403") {
                    m.push_str(
                        "; needs sns:Publish on the topic (IAM policy statement PublishAlerts)",
                    );
                }
                Err(m)
            }
        }
    }
}
