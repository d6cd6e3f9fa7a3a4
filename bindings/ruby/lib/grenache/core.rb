# frozen_string_literal: true

require 'json'

module Grenache
  # How long a blocking call waits beyond the library's own timeout before giving up on Ruby's
  # side (the library always completes its operations; this only bounds a wait that should
  # never happen).
  WAIT_SLACK = 10.0

  class << self
    # @return [String] the library's version, `"grenache/MAJOR.MINOR.PATCH"`
    def version
      Native.grenache_version
    end

    # @param code [Integer] a result code
    # @return [String, nil] its stable name (`"ERR_TIMEOUT"`), nil when it is not a code
    def result_name(code)
      Native.grenache_result_name(code)
    end

    # @param code [Integer] a result code
    # @return [String, nil] a one-line description, nil when it is not a code
    def result_message(code)
      buf = FFI::MemoryPointer.new(:char, 256)
      n = FFI::MemoryPointer.new(:size_t)
      return nil unless Native.grenache_result_message(code, buf, 256, n) == OK

      buf.read_bytes(n.read(:size_t)).force_encoding(Encoding::UTF_8)
    end

    # @api private
    # Raises the {Error} of `code` unless it is OK.
    def check!(code, detail = nil)
      raise Error.for(code, detail) unless code == OK
    end

    # @api private
    # Yields a pointer-sized out-parameter and returns what the call wrote there.
    def out_pointer
      o = FFI::MemoryPointer.new(:pointer)
      yield o
      o.read_pointer
    end

    # @api private
    # Seconds (Numeric or nil) to whole milliseconds (nil: 0, the library's default).
    def ms(seconds)
      return 0 if seconds.nil?
      raise ArgumentError, "a duration cannot be negative: #{seconds}" if seconds.negative?

      (seconds * 1000).ceil
    end

    # @api private
    # A Ruby value as JSON text (any JSON value: strings, numbers, nil... not only objects).
    def to_json_text(value)
      JSON.generate(value)
    end

    # @api private
    # JSON text (any JSON value) as a Ruby value.
    def from_json_text(text)
      JSON.parse(text)
    end

    # @api private
    # A C buffer holding `str` (plus a NUL), and its length in bytes.
    def buffer(str)
      str = str.to_s
      [FFI::MemoryPointer.from_string(str), str.bytesize]
    end

    # @api private
    # Reports an exception raised inside a callback of the library: it must never unwind into C.
    def report_callback_error(err, where)
      warn "grenache: exception in #{where}: #{err.class}: #{err.message}"
      warn err.backtrace.first(5).map { |l| "  #{l}" }.join("\n") if err.backtrace
    rescue Exception # rubocop:disable Lint/RescueException
      nil
    end
  end

  # @api private
  # The Ruby objects that the library may call back into, keyed by a small integer that travels
  # as the callbacks' userdata pointer. An object stays referenced here (so the GC cannot take
  # it) until its one-shot completion fired or its free_userdata callback ran.
  module Registry
    @lock = Mutex.new
    @objects = {}
    @next = 0

    class << self
      # @return [FFI::Pointer] the userdata for `obj`
      def add(obj)
        @lock.synchronize do
          @next += 1
          @objects[@next] = obj
          FFI::Pointer.new(@next)
        end
      end

      # The object of `userdata`, still registered.
      def get(userdata)
        @lock.synchronize { @objects[userdata.address] }
      end

      # The object of `userdata`, unregistered.
      def remove(userdata)
        @lock.synchronize { @objects.delete(userdata.address) }
      end

      # How many objects are registered (for tests: leaks show here).
      def size
        @lock.synchronize { @objects.size }
      end
    end
  end

  # The pending result of an asynchronous operation (a request, a lookup, a put...): returned by
  # the `*_async` methods; the blocking methods wait on one.
  class Future
    # @param convert [Proc, nil] turns the completion's JSON text into the value
    def initialize(convert = nil)
      @convert = convert
      @mutex = Mutex.new
      @cv = ConditionVariable.new
      @done = false
      @listeners = []
    end

    # @return [Boolean] whether the operation completed
    def done?
      @mutex.synchronize { @done }
    end

    # Waits for the completion.
    # @param timeout [Numeric, nil] seconds (nil: no limit)
    # @return [Boolean] true when completed, false on timeout
    def wait(timeout = nil)
      deadline = timeout && (now + timeout)
      @mutex.synchronize do
        until @done
          if deadline
            left = deadline - now
            return false if left <= 0

            @cv.wait(@mutex, left)
          else
            @cv.wait(@mutex)
          end
        end
      end
      true
    end

    # Waits for the completion and returns its value.
    # @param timeout [Numeric, nil] seconds (nil: no limit)
    # @return [Object] the operation's value
    # @raise [Error] the operation's error ({TimeoutError} when `timeout` elapsed first)
    def value(timeout = nil)
      raise TimeoutError.new(202, "no completion within #{timeout} s") unless wait(timeout)
      raise @error if @error

      @value
    end

    # Calls the block with `(value, error)` once completed (at once when already done). The
    # block runs on the library's callback thread: it must be quick and must not block.
    # @return [self]
    def on_done(&block)
      run = @mutex.synchronize do
        @listeners << block unless @done
        @done
      end
      block.call(@value, @error) if run
      self
    end

    # @api private
    # Completes the future (from the C callback).
    def complete(code, detail, json)
      value = nil
      error = nil
      if code == OK
        begin
          value = @convert ? @convert.call(json) : json
        rescue StandardError => e
          error = e
        end
      else
        error = Error.for(code, detail)
      end
      listeners = @mutex.synchronize do
        return if @done

        @value = value
        @error = error
        @done = true
        @cv.broadcast
        @listeners.tap { @listeners = [] }
      end
      listeners.each do |l|
        l.call(value, error)
      rescue Exception => e # rubocop:disable Lint/RescueException
        Grenache.report_callback_error(e, 'Future#on_done')
      end
    end

    private

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end

  # @api private
  # A queue served by Ruby threads of its own: library callbacks only enqueue (so a slow or
  # blocking Ruby block never holds a library thread nor ffi's callback thread), the threads run
  # the blocks, rescuing everything.
  class Dispatcher
    STOP = Object.new.freeze

    # @param name [String] for messages
    # @param threads [Integer] how many threads serve the queue
    def initialize(name, threads = 1, &work)
      @name = name
      @work = work
      @queue = Queue.new
      @threads = Array.new([threads, 1].max) do
        Thread.new do
          Thread.current.name = "grenache #{name}" if Thread.current.respond_to?(:name=)
          loop do
            item = @queue.pop
            break if item.nil? || item.equal?(STOP) # nil: closed and drained

            begin
              @work.call(item)
            rescue Exception => e # rubocop:disable Lint/RescueException
              Grenache.report_callback_error(e, name)
            end
          end
        end
      end
    end

    # Enqueues an item; false when the dispatcher is closed.
    def push(item)
      @queue << item
      true
    rescue ClosedQueueError
      false
    end

    # Stops the threads after the items already queued. With a positive `timeout`, waits at
    # most that long for each thread and returns the items left over (threads that did not
    # finish in time leave theirs in the queue); with 0, returns at once.
    def close(timeout = 5)
      return [] if @queue.closed?

      @threads.size.times { @queue << STOP }
      @queue.close
      return [] unless timeout.positive?

      @threads.each { |t| t.join(timeout) unless t == Thread.current }
      left = []
      left << @queue.pop until @queue.empty?
      left.reject { |i| i.equal?(STOP) }
    end
  end

  # @api private
  # The static C callbacks: one FFI::Function per C callback type, alive for the whole process.
  # Their userdata is a {Registry} key.
  module Callbacks
    # grenache_json_cb: completes a {Future}.
    JSON = FFI::Function.new(:void, %i[pointer uint32 pointer pointer size_t]) do |ud, code, err, json, len|
      future = Registry.remove(ud)
      detail = err.null? ? nil : Native.grenache_error_message(err)&.force_encoding(Encoding::UTF_8)
      text = json.null? ? nil : json.read_bytes(len).force_encoding(Encoding::UTF_8)
      future&.complete(code, detail, text)
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'json callback')
    end

    # grenache_done_cb: completes a {Future} with nil.
    DONE = FFI::Function.new(:void, %i[pointer uint32 pointer]) do |ud, code, err|
      future = Registry.remove(ud)
      detail = err.null? ? nil : Native.grenache_error_message(err)&.force_encoding(Encoding::UTF_8)
      future&.complete(code, detail, nil)
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'done callback')
    end

    # grenache_bool_cb: completes a {Future} with true or false.
    BOOL = FFI::Function.new(:void, %i[pointer uint32 pointer bool]) do |ud, code, err, value|
      future = Registry.remove(ud)
      detail = err.null? ? nil : Native.grenache_error_message(err)&.force_encoding(Encoding::UTF_8)
      future&.complete(code, detail, value)
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'bool callback')
    end

    # grenache_free_cb: unregisters the userdata and tells it (#released).
    FREE = FFI::Function.new(:void, [:pointer]) do |ud|
      obj = Registry.remove(ud)
      obj.released if obj.respond_to?(:released)
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'free callback')
    end

    # grenache_handler_cb: hands the request to its server (which answers on a Ruby thread).
    HANDLER = FFI::Function.new(:void, %i[pointer pointer pointer]) do |ud, req, reply|
      server = Registry.get(ud)
      if server
        server.accept(req, reply)
      else
        Native.grenache_reply_free(reply)
      end
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'request handler')
      Native.grenache_reply_error(reply, 'ERR_HANDLER_PANIC') unless reply.null?
    end

    # grenache_verify_client_cb: asks the hook; refuses on any exception.
    VERIFY = FFI::Function.new(:bool, %i[pointer pointer]) do |ud, info|
      hook = Registry.get(ud)
      hook && hook.call(ClientInfo.from_native(info)) ? true : false
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'verify_client hook')
      false
    end

    # grenache_message_ex_cb: hands a PUB/SUB message to its subscriber.
    MESSAGE = FFI::Function.new(:void, %i[pointer string pointer size_t bool]) do |ud, publisher, data, len, binary|
      sub = Registry.get(ud)
      if sub
        bytes = data.null? ? +'' : data.read_bytes(len)
        bytes.force_encoding(binary ? Encoding::BINARY : Encoding::UTF_8)
        sub.deliver(Message.new(bytes, publisher&.dup&.force_encoding(Encoding::UTF_8), binary))
      end
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'subscriber callback')
    end

    # grenache_grape_event_cb: hands a Grape event to its listener.
    GRAPE_EVENT = FFI::Function.new(:void, %i[pointer uint32 string uint64]) do |ud, kind, detail, dropped|
      listener = Registry.get(ud)
      listener&.deliver(GrapeEvent.new(Grape::EVENTS.fetch(kind, :other), detail&.dup, dropped))
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, 'grape event callback')
    end
  end

  # @api private
  # Runs a one-shot operation: registers a {Future}, starts the call with its userdata, and
  # unregisters it again when the call failed before starting (the callback then never fires).
  def self.start_operation(convert = nil)
    future = Future.new(convert)
    ud = Registry.add(future)
    rc = yield ud
    unless rc == OK
      Registry.remove(ud)
      raise Error.for(rc)
    end
    future
  end

  # The base of every object that owns a library handle: {#close} frees it (idempotent).
  class Handle
    # @api private
    def initialize
      @close_lock = Mutex.new
    end

    # Creates the object, yields it and closes it when the block returns.
    # @return [Object] the block's value
    def self.open(*args, **kwargs, &block)
      obj = new(*args, **kwargs)
      return obj unless block

      begin
        yield obj
      ensure
        obj.close
      end
    end

    # @return [Boolean] whether {#close} was called
    def closed?
      @ptr.nil?
    end

    # @api private
    # The live C handle.
    # @raise [ClosedError] after {#close}
    def ptr
      @ptr or raise ClosedError.new(203, "#{self.class.name} is closed")
    end

    # Frees the library handle (idempotent). Pending operations complete with {CancelledError}.
    # @return [nil]
    def close
      p = @close_lock.synchronize { @ptr.tap { @ptr = nil } }
      free_handle(p) if p
      nil
    end

    # Same as {#close}.
    def stop
      close
    end
  end

  # The worker threads on which the library runs every operation and callback
  # (`grenache_runtime`). Most programs use {Runtime.default}; handles keep their own reference
  # to the threads, so a runtime may be closed before or after them (their operations then
  # complete with {CancelledError}).
  class Runtime < Handle
    @default_lock = Mutex.new

    # @param threads [Integer] worker threads (0: one per CPU core); defaults to
    #   `ENV['GRENACHE_WORKER_THREADS']`, else 0
    def initialize(threads: Integer(ENV.fetch('GRENACHE_WORKER_THREADS', '0')))
      super()
      @ptr = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_runtime_new(threads, o)) }
    end

    # The process-wide runtime, created on first use and closed at exit.
    # @return [Runtime]
    def self.default
      @default_lock.synchronize do
        if @default.nil? || @default.closed?
          @default = new
          at_exit { @default&.close } unless @at_exit
          @at_exit = true
        end
        @default
      end
    end

    private

    def free_handle(p)
      Native.grenache_runtime_free(p)
    end
  end

  # @return [Runtime] the process-wide runtime ({Runtime.default})
  def self.runtime
    Runtime.default
  end
end
