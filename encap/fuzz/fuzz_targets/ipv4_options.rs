//! IPv4 options on arbitrary bytes: the check never panics, the options
//! lie end to end, an error points inside the area, and the check passes
//! exactly when every option is framed and sound (repeats aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::ipv4_options::{Options, Problem, check_header};

fuzz_target!(|area: &[u8]| {
    let options = Options::new_unchecked(area);
    let checked = options.check();
    if let Err(e) = checked {
        assert!(e.offset < area.len());
    }
    let mut next = 0;
    let mut sound = true;
    for option in options.iter() {
        match option {
            Ok(option) => {
                assert_eq!(option.offset(), next);
                assert_eq!(option.bytes(), &area[next..next + option.bytes().len()]);
                assert!(option.data().len() <= option.bytes().len());
                next += option.bytes().len();
                sound &= option.check().is_ok();
            }
            Err(_) => sound = false,
        }
    }
    match checked {
        Ok(()) => assert!(sound),
        Err(e) if e.problem != Problem::Repeated => assert!(!sound),
        Err(_) => {}
    }
    // As the options of a header: the first 20 bytes are the fixed part.
    let _ = check_header(area);
});
