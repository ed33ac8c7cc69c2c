//! Everything a SIP datagram from the network meets before a call actor sees it: the
//! parser and the extraction of transaction keys, the 400 answer for what does not
//! parse, the header and URI helpers admission uses, and SDP rewriting. Any panic,
//! hang or out-of-bounds access here is a bug (the node must survive any packet).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tsunagu_sip::parse::{
    header, header_values, parse, request_user, sdp_body, split_list, uri_addr, uri_of, uri_user,
};
use tsunagu_sip::SipMessage;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok((SipMessage::Request(req), _info)) => {
            let _ = request_user(&req);
            for name in [
                "From",
                "To",
                "Contact",
                "P-Asserted-Identity",
                "Privacy",
                "Session-Expires",
            ] {
                if let Some(v) = header(&req, name) {
                    let uri = uri_of(v);
                    let _ = (uri_user(uri), uri_addr(uri));
                    let _ = split_list(v);
                }
            }
            let _ = header_values(&req, "Via");
            if let Some(sdp) = sdp_body(&req, &req.body) {
                let _ = tsunagu_media::sdp::rewrite(&sdp, "127.0.0.1".parse().unwrap(), 20000);
            }
        }
        Ok((SipMessage::Response(resp), _info)) => {
            let _ = header(&resp, "Contact").map(uri_of);
            let _ = sdp_body(&resp, &resp.body);
        }
        Err(e) => {
            let _ = tsunagu_sip::build::bad_request_for(data, &e.to_string());
        }
    }
});
