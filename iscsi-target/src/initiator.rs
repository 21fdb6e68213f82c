//! A small iSCSI initiator on the same PDU codec, for tests and benchmarks: login,
//! discovery, SCSI commands with immediate data / R2T / Data-In, NOP, task
//! management, logout, and raw PDUs for malformed-input tests. [`Initiator::command`] runs
//! one command at a time; [`Initiator::submit`] and [`Initiator::next_done`] keep several
//! in flight (tagged by ITT, numbered by CmdSN within the target's MaxCmdSN window, with
//! immediate and unsolicited data and R2Ts answered as they come), as open-iscsi does.

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::pdu::{encode_text, op, parse_text, sn_lt, Pdu};
use crate::scsi::encode_lun;

/// What came back for one SCSI command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandResult {
    pub status: u8,
    /// Fixed-format sense bytes (without the 2-byte length) on CHECK CONDITION.
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    /// Residual count with its flag: positive = underflow, negative = overflow.
    pub residual: i64,
    /// Number of Data-In PDUs received.
    pub data_in_pdus: u32,
    /// Number of R2Ts the target sent.
    pub r2ts: u32,
}

impl CommandResult {
    pub fn sense_key(&self) -> Option<u8> {
        self.sense.get(2).map(|b| b & 0x0f)
    }
    /// (key, ASC, ASCQ)
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        if self.sense.len() < 14 {
            return None;
        }
        Some((self.sense[2] & 0x0f, self.sense[12], self.sense[13]))
    }
    /// INFORMATION field when VALID.
    pub fn information(&self) -> Option<i32> {
        if self.sense.len() >= 7 && self.sense[0] & 0x80 != 0 {
            Some(i32::from_be_bytes(
                self.sense[3..7].try_into().expect("4 bytes"),
            ))
        } else {
            None
        }
    }
    pub fn filemark(&self) -> bool {
        self.sense.get(2).is_some_and(|b| b & 0x80 != 0)
    }
    pub fn eom(&self) -> bool {
        self.sense.get(2).is_some_and(|b| b & 0x40 != 0)
    }
    pub fn ili(&self) -> bool {
        self.sense.get(2).is_some_and(|b| b & 0x20 != 0)
    }
}

fn err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One connection (one session) to a target.
pub struct Initiator {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    stream: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    pub tsih: u16,
    pub isid: [u8; 6],
    /// Keys the target answered at login.
    pub login_keys: Vec<(String, String)>,
    pub target_mrdsl: usize,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: usize,
    pub max_burst: usize,
    /// Largest data segment we declare.
    pub our_mrdsl: usize,
    /// The last MaxCmdSN the target granted.
    max_cmd_sn: u32,
    /// Commands submitted and not yet answered.
    in_flight: Vec<InFlight>,
    /// Commands answered but not yet taken with [`Initiator::next_done`].
    done: VecDeque<(u32, CommandResult)>,
}

/// A submitted command.
struct InFlight {
    itt: u32,
    lun: u64,
    /// The write data (kept for R2Ts).
    data_out: Vec<u8>,
    res: CommandResult,
}

impl Initiator {
    pub fn connect(addr: SocketAddr) -> io::Result<Initiator> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Initiator {
            r: BufReader::with_capacity(256 * 1024, s.try_clone()?),
            w: BufWriter::with_capacity(256 * 1024, s.try_clone()?),
            stream: s,
            cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 1,
            tsih: 0,
            isid: [0x80, 0, 0, 0x12, 0x34, 0x56],
            login_keys: Vec::new(),
            target_mrdsl: 8192,
            immediate_data: false,
            initial_r2t: true,
            first_burst: 65536,
            max_burst: 262_144,
            our_mrdsl: 262_144,
            max_cmd_sn: 1,
            in_flight: Vec::new(),
            done: VecDeque::new(),
        })
    }

    /// Log in with one Login Request straight to full feature phase, as libiscsi does.
    /// `target` None logs in a discovery session.
    pub fn login(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        isid: [u8; 6],
    ) -> io::Result<Initiator> {
        Initiator::login_with(addr, initiator, target, isid, &[])
    }

    /// As [`Initiator::login`], with some operational keys offered differently
    /// (e.g. `("InitialR2T", "Yes")`).
    pub fn login_with(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        isid: [u8; 6],
        overrides: &[(&str, &str)],
    ) -> io::Result<Initiator> {
        let mut i = Initiator::connect(addr)?;
        i.isid = isid;
        let mut keys = vec![("InitiatorName".to_string(), initiator.to_string())];
        match target {
            Some(t) => {
                keys.push(("TargetName".into(), t.into()));
                keys.push(("SessionType".into(), "Normal".into()));
            }
            None => keys.push(("SessionType".into(), "Discovery".into())),
        }
        for (k, v) in [
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None,CRC32C"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ] {
            let v = overrides
                .iter()
                .find(|(o, _)| *o == k)
                .map(|(_, v)| *v)
                .unwrap_or(v);
            keys.push((k.into(), v.into()));
        }
        let resp = i.login_pdu(0x87, &keys)?;
        let status = resp.u16_at(36);
        if status != 0 {
            return Err(err(format!("login failed with status 0x{status:04x}")));
        }
        if resp.flags() & 0x83 != 0x83 {
            return Err(err(format!(
                "login response flags 0x{:02x} do not reach full feature phase",
                resp.flags()
            )));
        }
        i.apply_login_keys()?;
        Ok(i)
    }

    /// Send one Login Request with the given flags and keys; return the response.
    pub fn login_pdu(&mut self, flags: u8, keys: &[(String, String)]) -> io::Result<Pdu> {
        let mut p = Pdu::new(op::LOGIN_REQ);
        p.set_immediate(true);
        p.set_flags(flags);
        p.bhs[8..14].copy_from_slice(&self.isid);
        p.set_u16(14, self.tsih);
        p.set_itt(0);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        p.data = encode_text(keys);
        self.send(&p)?;
        let r = self.recv()?;
        if r.opcode() != op::LOGIN_RESP {
            return Err(err(format!("expected a login response, got {r:?}")));
        }
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        self.max_cmd_sn = r.u32_at(32);
        self.tsih = r.u16_at(14);
        self.login_keys.extend(parse_text(&r.data));
        Ok(r)
    }

    fn apply_login_keys(&mut self) -> io::Result<()> {
        for (k, v) in self.login_keys.clone() {
            let num = || {
                v.parse::<usize>()
                    .map_err(|_| err(format!("{k}={v} is not a number")))
            };
            match k.as_str() {
                "MaxRecvDataSegmentLength" => self.target_mrdsl = num()?,
                "ImmediateData" => self.immediate_data = v == "Yes",
                "InitialR2T" => self.initial_r2t = v == "Yes",
                "FirstBurstLength" => self.first_burst = num()?,
                "MaxBurstLength" => self.max_burst = num()?,
                "HeaderDigest" | "DataDigest" if v != "None" => {
                    return Err(err(format!("target answered {k}={v}")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn send(&mut self, p: &Pdu) -> io::Result<()> {
        p.write_to(&mut self.w)?;
        self.w.flush()
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.w.flush()
    }

    pub fn recv(&mut self) -> io::Result<Pdu> {
        let mut rej = None;
        Pdu::read_from(&mut self.r, 1 << 24, &mut rej).map_err(|e| io::Error::other(e.to_string()))
    }

    fn itt(&mut self) -> u32 {
        let i = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        i
    }

    fn header(&mut self, opcode: u8, immediate: bool) -> Pdu {
        let mut p = Pdu::new(opcode);
        p.set_immediate(immediate);
        let itt = self.itt();
        p.set_itt(itt);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        p
    }

    /// Run one SCSI command on `lun`. `data_out` non-empty makes it a write;
    /// `read_len` is the expected data-in length.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> io::Result<CommandResult> {
        let edtl = if data_out.is_empty() {
            read_len
        } else {
            data_out.len() as u32
        };
        self.command_edtl(lun, cdb, data_out, read_len > 0, edtl)
    }

    /// As [`Initiator::command`] with an explicit expected data transfer length (to
    /// provoke residuals). For writes, `data_out` is what is actually sent.
    pub fn command_edtl(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read: bool,
        edtl: u32,
    ) -> io::Result<CommandResult> {
        let (itt, _) = self.start_command(lun, cdb, data_out, read, edtl)?;
        let mut res = CommandResult::default();
        loop {
            let mut r = self.recv()?;
            match r.opcode() {
                op::R2T => {
                    res.r2ts += 1;
                    self.answer_r2t(lun, itt, &r, data_out)?;
                }
                op::DATA_IN | op::SCSI_RESP => {
                    if self.take_response(&mut res, &mut r)? {
                        return Ok(res);
                    }
                }
                op::NOP_IN => {}
                _ => return Err(err(format!("unexpected PDU during a command: {r:?}"))),
            }
        }
    }

    /// Sends a SCSI command (numbered as the next one) with as much of `data_out` as
    /// ImmediateData and FirstBurstLength allow as immediate data and unsolicited
    /// Data-Out; returns its ITT and the end of the unsolicited part (the rest goes by
    /// R2T).
    fn start_command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read: bool,
        edtl: u32,
    ) -> io::Result<(u32, usize)> {
        let mut p = self.header(op::SCSI_CMD, false);
        let itt = p.itt();
        let write = !data_out.is_empty();
        let imm = if write && self.immediate_data {
            data_out.len().min(self.first_burst).min(self.target_mrdsl)
        } else {
            0
        };
        let unsolicited_end = if write && !self.initial_r2t {
            data_out.len().min(self.first_burst)
        } else {
            imm
        };
        p.set_flags(
            if unsolicited_end == imm { 0x80 } else { 0 }
                | if read { 0x40 } else { 0 }
                | if write { 0x20 } else { 0 }
                | 0x01,
        );
        p.set_lun(encode_lun(lun));
        p.set_u32(20, edtl);
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        p.bhs[32..48].copy_from_slice(&c);
        // The data goes out from the caller's buffer, not copied into the PDU.
        p.write_with_data(&mut self.w, &data_out[..imm])?;
        self.w.flush()?;
        self.send_data_out(lun, itt, 0xffff_ffff, data_out, imm, unsolicited_end)?;
        Ok((itt, unsolicited_end))
    }

    /// Data-Out PDUs carrying `data[from..to]`, each at most the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, the F bit on the last.
    fn send_data_out(
        &mut self,
        lun: u64,
        itt: u32,
        ttt: u32,
        data: &[u8],
        from: usize,
        to: usize,
    ) -> io::Result<()> {
        let (mut off, mut data_sn) = (from, 0);
        while off < to {
            let n = (to - off).min(self.target_mrdsl);
            self.data_out(
                lun,
                itt,
                ttt,
                data_sn,
                off,
                &data[off..off + n],
                off + n == to,
            )?;
            data_sn += 1;
            off += n;
        }
        Ok(())
    }

    /// Sends the part of `data` an R2T asks for.
    fn answer_r2t(&mut self, lun: u64, itt: u32, r2t: &Pdu, data: &[u8]) -> io::Result<()> {
        let ttt = r2t.u32_at(20);
        let boff = r2t.u32_at(40) as usize;
        let len = r2t.u32_at(44) as usize;
        if boff + len > data.len() {
            return Err(err(format!(
                "R2T for {len} bytes at {boff} beyond the {} we have",
                data.len()
            )));
        }
        self.send_data_out(lun, itt, ttt, data, boff, boff + len)
    }

    /// Takes a Data-In or SCSI Response PDU into `res`; true when it carried the
    /// command's status (the command is over).
    fn take_response(&mut self, res: &mut CommandResult, r: &mut Pdu) -> io::Result<bool> {
        if r.opcode() == op::DATA_IN {
            res.data_in_pdus += 1;
            let boff = r.u32_at(40) as usize;
            if boff != res.data.len() {
                return Err(err(format!(
                    "Data-In at offset {boff}, expected {}",
                    res.data.len()
                )));
            }
            if res.data.is_empty() {
                res.data = std::mem::take(&mut r.data);
            } else {
                res.data.extend_from_slice(&r.data);
            }
            if r.flags() & 0x01 == 0 {
                return Ok(false);
            }
        } else if r.data.len() >= 2 {
            let n = u16::from_be_bytes([r.data[0], r.data[1]]) as usize;
            res.sense = r.data[2..(2 + n).min(r.data.len())].to_vec();
        }
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        res.status = r.bhs[3];
        res.residual = residual(r.flags(), r.u32_at(44));
        Ok(true)
    }

    /// Commands submitted with [`Initiator::submit`] and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.done.len()
    }

    /// The MaxCmdSN the target granted last.
    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    /// Sends a SCSI command without waiting for its response and returns its ITT.
    /// `data_out` non-empty makes it a write: as much as ImmediateData and
    /// FirstBurstLength allow goes with the command and as unsolicited Data-Out, the
    /// rest when the target asks (R2T, answered while collecting). When the command's
    /// CmdSN is beyond the target's MaxCmdSN, responses are collected first (kept for
    /// [`Initiator::next_done`]) until the window opens. Do not mix with
    /// [`Initiator::command`] while commands are in flight.
    pub fn submit(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> io::Result<u32> {
        while sn_lt(self.max_cmd_sn, self.cmd_sn) {
            if self.in_flight.is_empty() {
                return Err(err(format!(
                    "the target's MaxCmdSN {} is below CmdSN {} with no command in flight",
                    self.max_cmd_sn, self.cmd_sn
                )));
            }
            self.pump()?;
        }
        let edtl = if data_out.is_empty() {
            read_len
        } else {
            data_out.len() as u32
        };
        let (itt, unsolicited_end) = self.start_command(lun, cdb, data_out, read_len > 0, edtl)?;
        self.in_flight.push(InFlight {
            itt,
            lun,
            data_out: if unsolicited_end < data_out.len() {
                data_out.to_vec()
            } else {
                Vec::new()
            },
            res: CommandResult::default(),
        });
        Ok(itt)
    }

    /// The next submitted command to complete (in the order the target answers) with
    /// its ITT.
    pub fn next_done(&mut self) -> io::Result<(u32, CommandResult)> {
        loop {
            if let Some(d) = self.done.pop_front() {
                return Ok(d);
            }
            if self.in_flight.is_empty() {
                return Err(err("next_done with no command in flight".into()));
            }
            self.pump()?;
        }
    }

    /// Receives one PDU for the submitted commands and acts on it.
    fn pump(&mut self) -> io::Result<()> {
        let mut r = self.recv()?;
        let opc = r.opcode();
        if matches!(
            opc,
            op::SCSI_RESP | op::DATA_IN | op::R2T | op::NOP_IN | op::TMF_RESP | op::ASYNC_MSG
        ) {
            let (exp, max) = (r.u32_at(28), r.u32_at(32));
            // A MaxCmdSN below ExpCmdSN - 1 is invalid and ignored (RFC 7143 4.2.2.1).
            if !sn_lt(max, exp.wrapping_sub(1)) && sn_lt(self.max_cmd_sn, max) {
                self.max_cmd_sn = max;
            }
        }
        if opc == op::NOP_IN {
            return Ok(());
        }
        let itt = r.itt();
        let Some(i) = self.in_flight.iter().position(|c| c.itt == itt) else {
            return Err(err(format!(
                "{r:?} for ITT 0x{itt:08x}, which no command in flight has"
            )));
        };
        match opc {
            op::R2T => {
                let c = &mut self.in_flight[i];
                c.res.r2ts += 1;
                let (lun, data) = (c.lun, std::mem::take(&mut c.data_out));
                let sent = self.answer_r2t(lun, itt, &r, &data);
                self.in_flight[i].data_out = data;
                sent
            }
            op::DATA_IN | op::SCSI_RESP => {
                let mut res = std::mem::take(&mut self.in_flight[i].res);
                let done = self.take_response(&mut res, &mut r)?;
                if done {
                    self.in_flight.remove(i);
                    self.done.push_back((itt, res));
                } else {
                    self.in_flight[i].res = res;
                }
                Ok(())
            }
            _ => Err(err(format!(
                "unexpected PDU for a command in flight: {r:?}"
            ))),
        }
    }

    /// A SCSI Command PDU with all of `data_out` as immediate data (which must fit in
    /// FirstBurstLength), numbered as the next command; sent with [`Initiator::send`].
    pub fn command_pdu(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], read_len: u32) -> Pdu {
        self.command_pdu_with(lun, cdb, data_out, read_len, false)
    }

    /// As [`Initiator::command_pdu`]; `immediate` sets the I bit (no CmdSN consumed).
    pub fn command_pdu_with(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
        immediate: bool,
    ) -> Pdu {
        let mut p = self.header(op::SCSI_CMD, immediate);
        let write = !data_out.is_empty();
        p.set_flags(
            0x80 | if read_len > 0 { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 0x01,
        );
        p.set_lun(encode_lun(lun));
        p.set_u32(
            20,
            if write {
                data_out.len() as u32
            } else {
                read_len
            },
        );
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        p.bhs[32..48].copy_from_slice(&c);
        p.data = data_out.to_vec();
        p
    }

    /// A NOP-Out ping PDU (immediate), numbered as the next request.
    pub fn nop_pdu(&mut self, data: &[u8]) -> Pdu {
        let mut p = self.header(op::NOP_OUT, true);
        p.set_flags(0x80);
        p.set_u32(20, 0xffff_ffff);
        p.data = data.to_vec();
        p
    }

    #[allow(clippy::too_many_arguments)]
    fn data_out(
        &mut self,
        lun: u64,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        off: usize,
        data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        let mut d = Pdu::new(op::DATA_OUT);
        d.set_flags(if last { 0x80 } else { 0 });
        d.set_lun(encode_lun(lun));
        d.set_itt(itt);
        d.set_u32(20, ttt);
        d.set_u32(28, self.exp_stat_sn);
        d.set_u32(36, data_sn);
        d.set_u32(40, off as u32);
        d.write_with_data(&mut self.w, data)?;
        self.w.flush()
    }

    /// NOP-Out ping; returns the echoed data.
    pub fn nop(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut p = self.header(op::NOP_OUT, true);
        p.set_flags(0x80);
        p.set_u32(20, 0xffff_ffff);
        p.data = data.to_vec();
        let itt = p.itt();
        self.send(&p)?;
        loop {
            let r = self.recv()?;
            if r.opcode() == op::NOP_IN && r.itt() == itt {
                self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
                return Ok(r.data);
            }
            if r.opcode() == op::REJECT {
                return Err(err("NOP-Out rejected".into()));
            }
        }
    }

    /// Send a task management request without waiting (e.g. while a command runs).
    pub fn send_tmf(&mut self, function: u8, lun: u64, ref_itt: u32) -> io::Result<u32> {
        let r = self.cmd_sn.wrapping_sub(1);
        self.send_tmf_ref(function, lun, ref_itt, r)
    }

    /// As [`Initiator::send_tmf`] with an explicit RefCmdSN.
    pub fn send_tmf_ref(
        &mut self,
        function: u8,
        lun: u64,
        ref_itt: u32,
        ref_cmd_sn: u32,
    ) -> io::Result<u32> {
        let mut p = self.header(op::TMF_REQ, true);
        p.set_flags(0x80 | function);
        p.set_lun(encode_lun(lun));
        p.set_u32(20, ref_itt);
        p.set_u32(32, ref_cmd_sn);
        let itt = p.itt();
        self.send(&p)?;
        Ok(itt)
    }

    /// Task management function; returns the response code.
    pub fn tmf(&mut self, function: u8, lun: u64, ref_itt: u32) -> io::Result<u8> {
        let itt = self.send_tmf(function, lun, ref_itt)?;
        self.tmf_response(itt)
    }

    /// Task management with an explicit RefCmdSN; returns the response code.
    pub fn tmf_ref(
        &mut self,
        function: u8,
        lun: u64,
        ref_itt: u32,
        ref_cmd_sn: u32,
    ) -> io::Result<u8> {
        let itt = self.send_tmf_ref(function, lun, ref_itt, ref_cmd_sn)?;
        self.tmf_response(itt)
    }

    /// The CmdSN the next non-immediate request will carry.
    pub fn next_cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    /// Consume a CmdSN without sending anything, as if that command were lost on the
    /// way; returns it.
    pub fn lose_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = sn.wrapping_add(1);
        sn
    }

    fn tmf_response(&mut self, itt: u32) -> io::Result<u8> {
        loop {
            let r = self.recv()?;
            if r.opcode() == op::TMF_RESP && r.itt() == itt {
                self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
                return Ok(r.bhs[2]);
            }
        }
    }

    /// The ITT the next request will carry.
    pub fn peek_itt(&self) -> u32 {
        self.next_itt
    }

    /// Text request with SendTargets=All; returns the answered pairs.
    pub fn send_targets(&mut self) -> io::Result<Vec<(String, String)>> {
        let mut p = self.header(op::TEXT_REQ, false);
        p.set_flags(0x80);
        p.set_u32(20, 0xffff_ffff);
        p.data = encode_text(&[("SendTargets".into(), "All".into())]);
        self.send(&p)?;
        let r = self.recv()?;
        if r.opcode() != op::TEXT_RESP {
            return Err(err(format!("expected a text response, got {r:?}")));
        }
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        Ok(parse_text(&r.data))
    }

    pub fn logout(&mut self) -> io::Result<u8> {
        let mut p = self.header(op::LOGOUT_REQ, true);
        p.set_flags(0x80);
        self.send(&p)?;
        let r = self.recv()?;
        if r.opcode() != op::LOGOUT_RESP {
            return Err(err(format!("expected a logout response, got {r:?}")));
        }
        Ok(r.bhs[2])
    }

    /// Close the TCP connection without logging out.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn residual(flags: u8, count: u32) -> i64 {
    if flags & 0x04 != 0 {
        -(count as i64)
    } else if flags & 0x02 != 0 {
        count as i64
    } else {
        0
    }
}
