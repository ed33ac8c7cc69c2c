//! SDP rewriting for media anchoring: the connection address and audio port of an
//! offer or answer are replaced by the node's, and the far end's are returned so the
//! relay knows where to send. Pure text in, text out.

use std::net::{IpAddr, SocketAddr};

/// The result of rewriting one SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub sdp: String,
    /// Where the far end said it receives audio; None on hold (0.0.0.0) or no audio.
    pub remote: Option<SocketAddr>,
}

/// Replaces origin and connection addresses with `addr` and the first audio port with
/// `port`. Other media streams are declined (port 0): only audio is anchored. RTCP
/// attributes are removed because RTCP is not relayed.
pub fn rewrite(sdp: &str, addr: IpAddr, port: u16) -> Option<Rewritten> {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut session_c: Option<IpAddr> = None;
    let mut audio_c: Option<IpAddr> = None;
    let mut audio_port: Option<u16> = None;
    let mut in_audio = false;
    let mut seen_audio = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let mut rewritten = None;
        if let Some(rest) = line.strip_prefix("o=") {
            let mut f: Vec<&str> = rest.split(' ').collect();
            if f.len() == 6 {
                f[4] = family;
                let a = addr.to_string();
                f[5] = &a;
                rewritten = Some(format!("o={}", f.join(" ")));
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            let ip = rest
                .split(' ')
                .nth(2)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok());
            if in_audio {
                audio_c = ip;
            } else if !seen_audio && audio_port.is_none() {
                session_c = ip;
            }
            rewritten = Some(format!("c=IN {family} {addr}"));
        } else if let Some(rest) = line.strip_prefix("m=") {
            let mut f: Vec<&str> = rest.split(' ').collect();
            in_audio = f.first() == Some(&"audio") && !seen_audio;
            if in_audio {
                seen_audio = true;
                audio_port = f
                    .get(1)
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok());
                let p = port.to_string();
                if f.len() > 1 {
                    f[1] = &p;
                }
                rewritten = Some(format!("m={}", f.join(" ")));
            } else if f.len() > 1 {
                f[1] = "0";
                rewritten = Some(format!("m={}", f.join(" ")));
            }
        } else if line.starts_with("a=rtcp:") {
            continue;
        }
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push_str("\r\n");
    }
    let audio_port = audio_port?;
    let ip = audio_c.or(session_c);
    let remote = match ip {
        Some(ip) if !ip.is_unspecified() && audio_port != 0 => {
            Some(SocketAddr::new(ip, audio_port))
        }
        _ => None,
    };
    Some(Rewritten { sdp: out, remote })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:6001\r\nm=video 7000 RTP/AVP 96\r\n";

    #[test]
    fn rewrites_addresses_and_audio_port() {
        let r = rewrite(OFFER, "192.0.2.5".parse().unwrap(), 20000).unwrap();
        assert_eq!(r.remote, Some("10.1.1.1:6000".parse().unwrap()));
        assert!(r
            .sdp
            .contains("o=user1 53655765 2353687637 IN IP4 192.0.2.5\r\n"));
        assert!(r.sdp.contains("c=IN IP4 192.0.2.5\r\n"));
        assert!(r.sdp.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(r.sdp.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(
            !r.sdp.contains("10.1.1.1"),
            "no address of the other leg leaks"
        );
        assert!(!r.sdp.contains("a=rtcp"));
    }

    #[test]
    fn media_level_connection_wins_and_hold_has_no_remote() {
        let sdp = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\nc=IN IP4 10.0.0.2\n";
        assert_eq!(
            rewrite(sdp, "127.0.0.1".parse().unwrap(), 20002)
                .unwrap()
                .remote,
            Some("10.0.0.2:4000".parse().unwrap())
        );
        let hold = OFFER.replace("c=IN IP4 10.1.1.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            rewrite(&hold, "127.0.0.1".parse().unwrap(), 20002)
                .unwrap()
                .remote,
            None
        );
    }

    #[test]
    fn no_audio_is_none() {
        assert!(rewrite(
            "v=0\r\nm=video 7000 RTP/AVP 96\r\n",
            "127.0.0.1".parse().unwrap(),
            1
        )
        .is_none());
        assert!(rewrite("garbage", "127.0.0.1".parse().unwrap(), 1).is_none());
    }
}
