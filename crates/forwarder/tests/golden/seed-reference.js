// Independent cross-check of the `seed` profile: the seed handler's own expressions
// (../../../../../shared/seeds/segment-integration.txt, lines 20-55), run by Node on the golden
// inputs, printed as JSON lines {case, track, identify, error?}. tests/seed_reference.rs runs it
// and compares it with the golden files; docs/mapping.md explains every difference.
// Usage: node seed-reference.js <case> <event> [<case> <event> ...]
const fs = require('fs');
const path = require('path');
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i += 2) {
  const name = args[i];
  const event = args[i + 1];
  const body = fs.readFileSync(path.join(__dirname, 'input', name + '.json'), 'utf8').replace(/\n$/, '');
  const payload = JSON.parse(body);
  let out = { case: name };
  try {
    const userId = payload.contact?.id ?? payload.contactId ?? 'anonymous';
    out.track = {
      userId,
      event: `Seshn ${event}`,
      properties: {
        bookingId: payload.id,
        serviceId: payload.serviceId ?? payload.service?.id,
        serviceName: payload.service?.name,
        seats: payload.seats,
        amount: payload.amount ?? payload.payment?.amount,
        currency: payload.currency ?? payload.payment?.currency,
        slotStartTime: payload.slot?.startTime,
        locationId: payload.locationId ?? payload.location?.id,
        seshnEvent: event,
      },
    };
    if (typeof userId !== 'string') throw new Error('analytics-node: userId must be a string');
    if (payload.contact) {
      out.identify = {
        userId: payload.contact.id,
        traits: { name: payload.contact.name, email: payload.contact.email, phone: payload.contact.phone },
      };
      if (typeof out.identify.userId !== 'string') throw new Error('analytics-node: identify userId must be a string');
    }
  } catch (e) {
    out.error = e.message;
  }
  console.log(JSON.stringify(out));
}
