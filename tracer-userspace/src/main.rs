mod capture;
mod filter;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let f = filter::Filter {
        pids: vec![],
        comms: vec![],
        ports: vec!["8099".parse().unwrap()],
    };
    let mut probes = capture::Probes::attach(&f, 2048)?;
    let mut ring = probes.take_events()?;
    eprintln!("ready");
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < 15 {
        while let Some(item) = ring.next() {
            let ev = capture::event::Event::decode(&item)?;
            let (l, r) = capture::event::endpoints(&ev.header.tuple);
            println!(
                "{} {} k={} d={} sc={} len={} cap={} {} -> {} {:?}",
                ev.comm(),
                ev.header.tgid,
                ev.header.kind,
                ev.header.direction,
                ev.header.syscall,
                ev.header.total_len,
                ev.header.captured_len,
                l,
                r,
                String::from_utf8_lossy(&ev.payload[..ev.payload.len().min(60)])
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("{:?}", probes.counters()?);
    Ok(())
}
