// The page of `bidviz serve`: the tab's own code, in live mode (a stream of events per run, and every series charted).
import {render} from './index.js';

render({live: true});
